"""Tokenizers of the tiny test models: byte-level BPE trained here on a few dozen sentences, with chat templates.

Split from the model builders (``tamp.testing.tiny``) because the tokenizer of a family is a self-contained recipe:
specials, template and the trained vocabulary. The same family always gives the same tokenizer, token for token,
which the tiny models' bit-identical weights (their vocabulary size, their special ids) depend on.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Tokenizer

# which families take a Llama (Vicuna template, <s> bos) or a Qwen (ChatML, no bos) tokenizer
LLAMA_LIKE = ("llava", "llava-next", "llama")
QWEN_LIKE = ("qwen2-vl", "qwen2.5-vl", "qwen2", "qwen2-audio", "llava-onevision", "qwen2.5-omni")
QWEN_LIKE += ("internvl3",)  # InternVL3's language model is Qwen2.5: ChatML, no bos
MAX_LENGTH = 4096  # the tiny models' max_position_embeddings

_CORPUS: tuple[str, ...] = (
    "The small grey cat is sleeping on the warm windowsill.",
    "A red bus drives slowly down the narrow street in the rain.",
    "Two children are building a sand castle near the blue sea.",
    "What colour is the umbrella that the woman is holding?",
    "There are three apples and one banana on the wooden table.",
    "Please describe this picture in one short sentence.",
    "The dog runs across the green field to catch a yellow ball.",
    "How many people can you see in the photo?",
    "A tall lighthouse stands on the rocks above the stormy water.",
    "The kitchen has white cupboards, a steel sink and a large oven.",
    "Answer the question using a single word or phrase.",
    "An old man reads a newspaper while sitting on a park bench.",
    "The mountain is covered with snow and the sky is clear.",
    "Is there a bicycle leaning against the brick wall?",
    "Yes, there is a black bicycle next to the door.",
    "No, the room is empty except for a chair and a lamp.",
    "The chart shows that sales grew by twenty percent in 2023.",
    "She wrote the numbers 1, 2, 3, 4, 5 and 6 on the board.",
    "A plate of pasta with tomato sauce and fresh basil leaves.",
    "The train arrives at the station at half past seven.",
    "Look at the image and tell me what the sign says.",
    "The sign says: STOP! Do not enter without permission.",
    "Birds are flying over the lake while the sun goes down.",
    "A person in a blue jacket is skiing down a steep slope.",
    "The laptop on the desk is open and the screen is bright.",
    "Which animal is larger, the horse or the sheep?",
    "The horse is larger than the sheep standing beside it.",
    "Green, orange, purple and pink flowers grow in the garden.",
    "You are a helpful assistant that looks carefully at images.",
    "The quick brown fox jumps over the lazy dog.",
    "Where is the boy standing? He is standing under the tree.",
    "A cup of coffee and a croissant sit on a round table.",
    "The text in the document is written in a small, neat font.",
    "It was a sunny afternoon, so everyone went outside to play.",
    "Count the windows on the front of the house.",
    "There are eight windows and a green front door.",
    "The video shows a car turning left at the crossing.",
    "Explain why the sky looks blue during the day.",
)
_BPE_VOCAB_SIZE = 512

_LLAMA_SPECIALS = ("<unk>", "<s>", "</s>", "<pad>")
_LLAVA_SPECIALS = _LLAMA_SPECIALS + ("<image>",)
_QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_QWEN_VL_SPECIALS = _QWEN_SPECIALS + ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
_QWEN_AUDIO_SPECIALS = _QWEN_SPECIALS + ("<|audio_bos|>", "<|audio_eos|>", "<|AUDIO|>")
_ONEVISION_SPECIALS = _QWEN_SPECIALS + ("<image>", "<video>")
# Qwen2.5-Omni's own names; the processor reads them as tokenizer attributes (image_token, ...)
OMNI_TOKENS = {
    "image_token": "<|IMAGE|>",
    "video_token": "<|VIDEO|>",
    "audio_token": "<|AUDIO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
}
# Gemma 3's names; its processor reads boi / eoi / image tokens and their ids as tokenizer attributes
GEMMA3_TOKENS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
_GEMMA3_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>",
                    *GEMMA3_TOKENS.values())
_OMNI_SPECIALS = _QWEN_SPECIALS + tuple(OMNI_TOKENS.values())
# SmolVLM (SmolLM2's specials, Idefics3's image tokens): a tile's <row_r_col_c> up to the tiny build's 2 x 2 tiles
SMOLVLM_MAX_TILES = 2
_SMOLVLM_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<end_of_utterance>", "<fake_token_around_image>",
                     "<image>", "<global-img>") + tuple(f"<row_{r}_col_{c}>" for r in range(1, SMOLVLM_MAX_TILES + 1)
                                                         for c in range(1, SMOLVLM_MAX_TILES + 1))
# InternVL's processor reads these tokenizer attributes (its image token is the context token <IMG_CONTEXT>)
INTERNVL_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                   "video_token": "<video>"}

# Chat templates. Every tag strips surrounding whitespace, so layout here is free and
# newlines are emitted explicitly; __IMAGE__ / __VIDEO__ become Jinja string literals.
_CONTENT = r"""
    {%- if message['content'] is string -%}
        {{- message['content'] -}}
    {%- else -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{- __IMAGE__ -}}
            {%- elif item['type'] == 'video' -%}
                {{- __VIDEO__ -}}
__AUDIO_BRANCH__            {%- elif item['type'] == 'text' -%}
                {{- item['text'] -}}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
"""

_AUDIO_BRANCH = r"""            {%- elif item['type'] == 'audio' -%}
                {{- __AUDIO__ -}}
"""

# Vicuna / LLaVA-1.5 style: "<s>system\nUSER: <image>\nquestion\nASSISTANT: answer</s>\n".
_VICUNA_TEMPLATE = r"""
{{- bos_token -}}
{%- for message in messages -%}
    {%- if message['role'] not in ['system', 'user', 'assistant'] -%}
        {{- raise_exception('Unsupported role: ' + message['role']) -}}
    {%- elif message['role'] == 'user' -%}
        {{- 'USER: ' -}}
    {%- elif message['role'] == 'assistant' -%}
        {{- 'ASSISTANT: ' -}}
    {%- endif -%}
    __CONTENT__
    {%- if message['role'] == 'assistant' -%}
        {{- eos_token -}}
    {%- endif -%}
    {{- '\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- 'ASSISTANT:' -}}
{%- endif -%}
"""

# Qwen ChatML style: "<|im_start|>role\ncontent<|im_end|>\n" per message.
_CHATML_TEMPLATE = r"""
{%- for message in messages -%}
    {%- if message['role'] not in ['system', 'user', 'assistant'] -%}
        {{- raise_exception('Unsupported role: ' + message['role']) -}}
    {%- endif -%}
    {{- '<|im_start|>' + message['role'] + '\n' -}}
    __CONTENT__
    {{- '<|im_end|>' + '\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant' + '\n' -}}
{%- endif -%}
"""


# SmolVLM's: "<|im_start|>User:<image>question<end_of_utterance>\nAssistant: answer<end_of_utterance>\n"
_SMOLVLM_TEMPLATE = r"""
{{- '<|im_start|>' -}}
{%- for message in messages -%}
    {%- if message['role'] not in ['system', 'user', 'assistant'] -%}
        {{- raise_exception('Unsupported role: ' + message['role']) -}}
    {%- endif -%}
    {{- message['role'] | capitalize -}}
    {%- if message['content'] is string or message['content'][0]['type'] != 'image' -%}
        {{- ': ' -}}
    {%- else -%}
        {{- ':' -}}
    {%- endif -%}
    __CONTENT__
    {{- '<end_of_utterance>' + '\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- 'Assistant:' -}}
{%- endif -%}
"""


# Gemma 3 style: "<bos><start_of_turn>user\ncontent<end_of_turn>\n<start_of_turn>model\n" (assistant -> model);
# an image is its boi token, which the processor expands to "\n\n<boi><image_soft_token> x N<eoi>\n\n".
_GEMMA_TEMPLATE = r"""
{{- bos_token -}}
{%- for message in messages -%}
    {%- if message['role'] not in ['system', 'user', 'assistant'] -%}
        {{- raise_exception('Unsupported role: ' + message['role']) -}}
    {%- endif -%}
    {{- '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' -}}
    __CONTENT__
    {{- '<end_of_turn>' + '\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<start_of_turn>model' + '\n' -}}
{%- endif -%}
"""


def _chat_template(skeleton: str, image: str, video: str, audio: str = "''") -> str:
    """Fill a template skeleton; ``image``/``video``/``audio`` are Jinja literals for one media item."""
    # the audio branch only where a family takes audio, so the older families' templates stay byte-identical
    branch = "" if audio == "''" else _AUDIO_BRANCH.replace("__AUDIO__", audio)
    content = _CONTENT.replace("__IMAGE__", image).replace("__VIDEO__", video).replace("__AUDIO_BRANCH__", branch)
    return skeleton.replace("__CONTENT__", content.strip()).strip() + "\n"


def _train_bpe(specials: tuple[str, ...], prepend_bos: str | None, qwen_style: bool) -> Tokenizer:
    """Byte-level BPE trained on the built-in corpus; specials take the lowest ids.

    ``qwen_style`` borrows the normalizer and pre-tokenizer of transformers' own
    ``Qwen2Tokenizer`` (NFC + Qwen split regex), because ``AutoTokenizer`` rebuilds that
    pipeline for ``model_type == "qwen2"`` whatever ``tokenizer.json`` says; training
    with it keeps every loading path identical.
    """
    tok = Tokenizer(models.BPE())
    if qwen_style:
        reference = Qwen2Tokenizer().backend_tokenizer
        tok.normalizer = reference.normalizer
        tok.pre_tokenizer = reference.pre_tokenizer
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_BPE_VOCAB_SIZE,
        min_frequency=1,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(_CORPUS), trainer=trainer)
    if prepend_bos is not None:  # Llama tokenizers add bos when add_special_tokens=True
        tok.post_processor = processors.TemplateProcessing(
            single=f"{prepend_bos} $A",
            pair=f"{prepend_bos} $A {prepend_bos} $B",
            special_tokens=[(prepend_bos, tok.token_to_id(prepend_bos))],
        )
    return tok


def make_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """The tokenizer of ``family`` with its chat template attached."""
    if family in LLAMA_LIKE:
        multimodal = family != "llama"
        template = _chat_template(_VICUNA_TEMPLATE, r"'<image>\n'" if multimodal else "''", "''")
        return PreTrainedTokenizerFast(
            tokenizer_object=_train_bpe(
                _LLAVA_SPECIALS if multimodal else _LLAMA_SPECIALS, prepend_bos="<s>", qwen_style=False
            ),
            bos_token="<s>",
            eos_token="</s>",
            unk_token="<unk>",
            pad_token="<pad>",
            padding_side="left",
            model_max_length=MAX_LENGTH,
            chat_template=template,
        )
    if family == "smolvlm":  # SmolLM2's byte-level BPE: bos <|im_start|>, eos <end_of_utterance>
        return PreTrainedTokenizerFast(
            tokenizer_object=_train_bpe(_SMOLVLM_SPECIALS, prepend_bos=None, qwen_style=False),
            bos_token="<|im_start|>",
            eos_token="<end_of_utterance>",
            unk_token="<|endoftext|>",
            pad_token="<|im_end|>",
            padding_side="left",
            model_max_length=MAX_LENGTH,
            chat_template=_chat_template(_SMOLVLM_TEMPLATE, "'<image>'", "''"),
        )
    if family == "gemma3":
        return PreTrainedTokenizerFast(
            tokenizer_object=_train_bpe(_GEMMA3_SPECIALS, prepend_bos="<bos>", qwen_style=False),
            bos_token="<bos>", eos_token="<end_of_turn>", unk_token="<unk>", pad_token="<pad>",
            padding_side="left", model_max_length=MAX_LENGTH, extra_special_tokens=dict(GEMMA3_TOKENS),
            chat_template=_chat_template(_GEMMA_TEMPLATE, "'<start_of_image>'", "''"),
        )
    specials, media, extra = _QWEN_SPECIALS, ("''", "''", "''"), {}
    if family in ("qwen2-vl", "qwen2.5-vl"):
        specials = _QWEN_VL_SPECIALS
        media = ("'<|vision_start|><|image_pad|><|vision_end|>'", "'<|vision_start|><|video_pad|><|vision_end|>'", "''")
    elif family == "qwen2-audio":
        specials = _QWEN_AUDIO_SPECIALS
        media = ("''", "''", "'<|audio_bos|><|AUDIO|><|audio_eos|>'")
    elif family == "llava-onevision":
        specials = _ONEVISION_SPECIALS
        media = (r"'<image>\n'", r"'<video>\n'", "''")
    elif family == "qwen2.5-omni":
        specials, extra = _OMNI_SPECIALS, {"extra_special_tokens": dict(OMNI_TOKENS)}
        media = ("'<|vision_bos|><|IMAGE|><|vision_eos|>'", "'<|vision_bos|><|VIDEO|><|vision_eos|>'",
                 "'<|audio_bos|><|AUDIO|><|audio_eos|>'")
    elif family == "internvl3":  # the template names the context token; the processor expands it per tile
        specials, extra = _QWEN_SPECIALS + tuple(INTERNVL_TOKENS.values()), {"extra_special_tokens": dict(INTERNVL_TOKENS)}
        media = (r"'<IMG_CONTEXT>\n'", r"'<video>\n'", "''")
    # As upstream Qwen: no bos token; eos is <|im_end|>, padding with <|endoftext|>.
    return PreTrainedTokenizerFast(
        tokenizer_object=_train_bpe(specials, prepend_bos=None, qwen_style=True),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=MAX_LENGTH,
        chat_template=_chat_template(_CHATML_TEMPLATE, *media),
        **extra,
    )


def token_id(tok: PreTrainedTokenizerFast, token: str) -> int:
    """Id of a token that must be in the vocabulary."""
    idx = tok.get_vocab().get(token)
    if idx is None:
        raise RuntimeError(f"tokenizer lacks {token!r}")
    return idx


def special_ids(tok: PreTrainedTokenizerFast, family: str) -> dict[str, int]:
    """bos/eos/pad ids for the model config (Qwen's config bos is ``<|endoftext|>``)."""
    if family in QWEN_LIKE:
        bos = token_id(tok, "<|endoftext|>")
    else:
        bos = tok.bos_token_id
    return dict(bos_token_id=bos, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
