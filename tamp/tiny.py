"""Tiny, randomly initialised models for offline tests.

``build_tiny(family, out)`` writes a complete Hugging Face checkpoint folder
(float32 safetensors weights, config, generation config, a byte-level BPE
tokenizer trained here on a few dozen sentences, and for multimodal families
an image processor + processor with a chat template) that the ordinary
``from_pretrained`` calls load without any network access.

Every family has the same language model shape: hidden 64, 4 decoder layers,
MLP intermediate 128 (gate/up/down), 4 query heads and 2 KV heads (head_dim 16).
Vision towers are as small as the architectures allow (width 32, 2 layers).

Qwen-VL note: the stock Qwen2-VL / Qwen2.5-VL processors always construct a
video processor, which needs torchvision. The saved files are the upstream
layout (so ``AutoProcessor`` works wherever torchvision is installed); use
:func:`load_processor` to get a working image+text processor either way.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoConfig,
    AutoProcessor,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Tokenizer,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
)
from transformers.utils import is_torchvision_available

__all__ = [
    "TINY_FAMILIES",
    "Qwen2VLImageOnlyProcessor",
    "Qwen2_5_VLImageOnlyProcessor",
    "build_tiny",
    "load_processor",
]

TINY_FAMILIES: tuple[str, ...] = ("llava", "llava-next", "qwen2-vl", "qwen2.5-vl", "llama", "qwen2")

_LLAMA_LIKE = ("llava", "llava-next", "llama")
_QWEN_LIKE = ("qwen2-vl", "qwen2.5-vl", "qwen2")

# ---------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------

_TEXT_SHAPE: dict = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)
_MAX_LENGTH = _TEXT_SHAPE["max_position_embeddings"]
# Qwen multimodal RoPE sections over (temporal, height, width); they sum to head_dim / 2 = 8.
_MROPE_SECTION = (2, 3, 3)

# CLIP tower shared by the LLaVA families.
_CLIP_SHAPE: dict = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    patch_size=8,
    projection_dim=32,
    hidden_act="quick_gelu",
)
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_LLAVA_IMAGE_SIZE = 48  # 6 x 6 patches -> 36 image tokens for any image
_LLAVA_NEXT_TILE = 32  # 4 x 4 patches per tile
_LLAVA_NEXT_PINPOINTS = ((32, 64), (64, 32), (64, 64))  # multiples of the tile

# Qwen: patch 14 x merge 2 -> one LM token per 28 x 28 pixels.
_QWEN_MIN_PIXELS = 56 * 56
_QWEN_MAX_PIXELS = 28 * 28 * 64  # at most 64 tokens per image
_QWEN_VIDEO_MAX_PIXELS = 28 * 28 * 16  # at most 16 tokens per frame pair

# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------

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
            {%- elif item['type'] == 'text' -%}
                {{- item['text'] -}}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
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


def _chat_template(skeleton: str, image: str, video: str) -> str:
    """Fill a template skeleton; ``image``/``video`` are Jinja literals for one media item."""
    content = _CONTENT.replace("__IMAGE__", image).replace("__VIDEO__", video)
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


def _make_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """The tokenizer of ``family`` with its chat template attached."""
    if family in _LLAMA_LIKE:
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
            model_max_length=_MAX_LENGTH,
            chat_template=template,
        )
    multimodal = family != "qwen2"
    if multimodal:
        template = _chat_template(
            _CHATML_TEMPLATE,
            "'<|vision_start|><|image_pad|><|vision_end|>'",
            "'<|vision_start|><|video_pad|><|vision_end|>'",
        )
    else:
        template = _chat_template(_CHATML_TEMPLATE, "''", "''")
    # As upstream Qwen: no bos token; eos is <|im_end|>, padding with <|endoftext|>.
    return PreTrainedTokenizerFast(
        tokenizer_object=_train_bpe(
            _QWEN_VL_SPECIALS if multimodal else _QWEN_SPECIALS, prepend_bos=None, qwen_style=True
        ),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=_MAX_LENGTH,
        chat_template=template,
    )


def _token_id(tok: PreTrainedTokenizerFast, token: str) -> int:
    """Id of a token that must be in the vocabulary."""
    idx = tok.get_vocab().get(token)
    if idx is None:
        raise RuntimeError(f"tokenizer lacks {token!r}")
    return idx


def _special_ids(tok: PreTrainedTokenizerFast, family: str) -> dict[str, int]:
    """bos/eos/pad ids for the model config (Qwen's config bos is ``<|endoftext|>``)."""
    if family in _QWEN_LIKE:
        bos = _token_id(tok, "<|endoftext|>")
    else:
        bos = tok.bos_token_id
    return dict(bos_token_id=bos, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


# ---------------------------------------------------------------------------
# Qwen-VL processors without torchvision
# ---------------------------------------------------------------------------


class _QwenImageOnlyInit:
    """``__init__`` for Qwen-VL processors that have no video processor.

    The stock processors list ``video_processor`` among their parts, and video processors
    need torchvision; these subclasses declare only ``(image_processor, tokenizer)`` so
    images and text work on a torchvision-free install. Videos are not supported.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs) -> None:
        self.image_token = "<|image_pad|>"
        self.video_token = "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


class Qwen2VLImageOnlyProcessor(_QwenImageOnlyInit, Qwen2VLProcessor):
    """Qwen2-VL processor for images and text only (no torchvision needed)."""


class Qwen2_5_VLImageOnlyProcessor(_QwenImageOnlyInit, Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor for images and text only (no torchvision needed)."""


# model_type -> (stock processor class name, torchvision-free stand-in)
_QWEN_VL_PROCESSORS: dict[str, tuple[str, type[ProcessorMixin]]] = {
    "qwen2_vl": ("Qwen2VLProcessor", Qwen2VLImageOnlyProcessor),
    "qwen2_5_vl": ("Qwen2_5_VLProcessor", Qwen2_5_VLImageOnlyProcessor),
}


def _qwen_image_processor() -> Qwen2VLImageProcessorPil:
    return Qwen2VLImageProcessorPil(
        size={"shortest_edge": _QWEN_MIN_PIXELS, "longest_edge": _QWEN_MAX_PIXELS},
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=list(_CLIP_MEAN),
        image_std=list(_CLIP_STD),
    )


def _qwen_video_processor_dict() -> dict:
    """What a ``Qwen2VLVideoProcessor`` would save (it cannot be built without torchvision)."""
    return {
        "video_processor_type": "Qwen2VLVideoProcessor",
        "size": {"shortest_edge": _QWEN_MIN_PIXELS, "longest_edge": _QWEN_VIDEO_MAX_PIXELS},
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": list(_CLIP_MEAN),
        "image_std": list(_CLIP_STD),
        "do_resize": True,
        "do_rescale": True,
        "do_normalize": True,
        "do_convert_rgb": True,
        "do_sample_frames": False,
    }


def _rewrite_json(path: Path, updates: dict) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(updates)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def restore_stock_processor_files(out: Path, model_type: str) -> None:
    """Make the saved processor files name the stock Qwen processor and carry a video config."""
    stock_name = _QWEN_VL_PROCESSORS[model_type][0]
    _rewrite_json(
        out / "processor_config.json",
        {"processor_class": stock_name, "video_processor": _qwen_video_processor_dict()},
    )
    _rewrite_json(out / "tokenizer_config.json", {"processor_class": stock_name})


def load_processor(path: str | Path, revision: str | None = None):
    """Load the processor saved by :func:`build_tiny` (the tokenizer for text-only families).

    This is ``AutoProcessor.from_pretrained(path)``, except for Qwen-VL checkpoints on an
    install without torchvision, where the stock processor cannot be built and the
    image-only stand-in is returned instead.
    """
    model_type = AutoConfig.from_pretrained(path, revision=revision).model_type
    if model_type in _QWEN_VL_PROCESSORS and not is_torchvision_available():
        return _QWEN_VL_PROCESSORS[model_type][1].from_pretrained(path, revision=revision)
    return AutoProcessor.from_pretrained(path, revision=revision)


# ---------------------------------------------------------------------------
# Per-family builders: (model, processor or None)
# ---------------------------------------------------------------------------


def _llama_config(tok: PreTrainedTokenizerFast, family: str) -> LlamaConfig:
    return LlamaConfig(**_TEXT_SHAPE, **_special_ids(tok, family), vocab_size=len(tok))


def _qwen_text_kwargs(tok: PreTrainedTokenizerFast, family: str) -> dict:
    return dict(
        **_TEXT_SHAPE,
        **_special_ids(tok, family),
        vocab_size=len(tok),
        max_window_layers=_TEXT_SHAPE["num_hidden_layers"],
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": list(_MROPE_SECTION)},
    )


def _qwen_vl_token_ids(tok: PreTrainedTokenizerFast) -> dict[str, int]:
    return dict(
        image_token_id=_token_id(tok, "<|image_pad|>"),
        video_token_id=_token_id(tok, "<|video_pad|>"),
        vision_start_token_id=_token_id(tok, "<|vision_start|>"),
        vision_end_token_id=_token_id(tok, "<|vision_end|>"),
    )


def _llava_common(tok: PreTrainedTokenizerFast, family: str, image_size: int) -> dict:
    """Config fields shared by LLaVA and LLaVA-NeXT."""
    return dict(
        vision_config=CLIPVisionConfig(**_CLIP_SHAPE, image_size=image_size),
        text_config=_llama_config(tok, family),
        image_token_index=_token_id(tok, "<image>"),
        image_seq_length=(image_size // _CLIP_SHAPE["patch_size"]) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )


def _llava_processor_kwargs(tok: PreTrainedTokenizerFast) -> dict:
    return dict(
        tokenizer=tok,
        patch_size=_CLIP_SHAPE["patch_size"],
        vision_feature_select_strategy="default",
        chat_template=tok.chat_template,
        image_token="<image>",
        num_additional_image_tokens=1,  # CLIP's CLS token
    )


def _build_llava(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, ProcessorMixin]:
    side = _LLAVA_IMAGE_SIZE
    config = LlavaConfig(**_llava_common(tok, "llava", side))
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": side},
        crop_size={"height": side, "width": side},
        image_mean=list(_CLIP_MEAN),
        image_std=list(_CLIP_STD),
    )
    processor = LlavaProcessor(image_processor=image_processor, **_llava_processor_kwargs(tok))
    return LlavaForConditionalGeneration(config), processor


def _build_llava_next(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, ProcessorMixin]:
    side = _LLAVA_NEXT_TILE
    config = LlavaNextConfig(
        **_llava_common(tok, "llava-next", side),
        image_grid_pinpoints=[list(p) for p in _LLAVA_NEXT_PINPOINTS],
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": side},
        crop_size={"height": side, "width": side},
        image_grid_pinpoints=[list(p) for p in _LLAVA_NEXT_PINPOINTS],
        image_mean=list(_CLIP_MEAN),
        image_std=list(_CLIP_STD),
    )
    processor = LlavaNextProcessor(image_processor=image_processor, **_llava_processor_kwargs(tok))
    return LlavaNextForConditionalGeneration(config), processor


def _build_qwen2_vl(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, ProcessorMixin]:
    config = Qwen2VLConfig(
        text_config=_qwen_text_kwargs(tok, "qwen2-vl"),
        vision_config=dict(
            depth=2,
            embed_dim=32,
            num_heads=2,
            mlp_ratio=2,
            hidden_size=_TEXT_SHAPE["hidden_size"],  # merger output = LM hidden
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        **_qwen_vl_token_ids(tok),
        tie_word_embeddings=False,
    )
    processor = Qwen2VLImageOnlyProcessor(_qwen_image_processor(), tok, chat_template=tok.chat_template)
    return Qwen2VLForConditionalGeneration(config), processor


def _build_qwen2_5_vl(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, ProcessorMixin]:
    config = Qwen2_5_VLConfig(
        text_config=_qwen_text_kwargs(tok, "qwen2.5-vl"),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=_TEXT_SHAPE["hidden_size"],  # merger output = LM hidden
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,  # windows of 2 x 2 merged tokens
            fullatt_block_indexes=[1],  # block 0 windowed, block 1 full attention
        ),
        **_qwen_vl_token_ids(tok),
        tie_word_embeddings=False,
    )
    processor = Qwen2_5_VLImageOnlyProcessor(_qwen_image_processor(), tok, chat_template=tok.chat_template)
    return Qwen2_5_VLForConditionalGeneration(config), processor


def _build_llama(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, None]:
    return LlamaForCausalLM(_llama_config(tok, "llama")), None


def _build_qwen2(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, None]:
    config = Qwen2Config(
        **_TEXT_SHAPE,
        **_special_ids(tok, "qwen2"),
        vocab_size=len(tok),
        max_window_layers=_TEXT_SHAPE["num_hidden_layers"],
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
    )
    return Qwen2ForCausalLM(config), None


_BUILDERS = {
    "llava": _build_llava,
    "llava-next": _build_llava_next,
    "qwen2-vl": _build_qwen2_vl,
    "qwen2.5-vl": _build_qwen2_5_vl,
    "llama": _build_llama,
    "qwen2": _build_qwen2,
}


def _generation_config(tok: PreTrainedTokenizerFast, family: str) -> GenerationConfig:
    """Greedy decoding; Qwen stops on ``<|im_end|>`` or ``<|endoftext|>``."""
    ids = _special_ids(tok, family)
    eos: int | list[int] = ids["eos_token_id"]
    if family in _QWEN_LIKE:
        eos = [ids["eos_token_id"], ids["bos_token_id"]]
    return GenerationConfig(
        bos_token_id=ids["bos_token_id"], eos_token_id=eos, pad_token_id=ids["pad_token_id"], do_sample=False
    )


def build_tiny(family: str, out: str | Path, seed: int = 0) -> Path:
    """Write a tiny random ``family`` checkpoint into ``out`` and return ``out`` as a Path.

    Writes ``model.safetensors`` (float32), ``config.json``, ``generation_config.json``,
    the tokenizer files and, for multimodal families, ``processor_config.json`` and
    ``chat_template.jinja``. The same family and seed give byte-identical files; the
    caller's torch RNG state is left untouched.
    """
    if family not in _BUILDERS:
        raise ValueError(f"unknown tiny family {family!r}; known families: {', '.join(TINY_FAMILIES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    tok = _make_tokenizer(family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device("cpu"):
            model, processor = _BUILDERS[family](tok)
    model = model.to(torch.float32).eval()
    model.config.dtype = torch.float32
    model.generation_config = _generation_config(tok, family)

    model.save_pretrained(out)
    tok.save_pretrained(out)
    if processor is not None:
        processor.save_pretrained(out)
        if model.config.model_type in _QWEN_VL_PROCESSORS:
            restore_stock_processor_files(out, model.config.model_type)
    return out
