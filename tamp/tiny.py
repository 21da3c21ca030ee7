"""Tiny, randomly initialised models for offline tests.

``build_tiny(family, out)`` writes a complete Hugging Face checkpoint folder
(float32 safetensors weights, config, generation config, a byte-level BPE
tokenizer trained here on a few dozen sentences, and for multimodal families
an image processor + processor with a chat template) that the ordinary
``from_pretrained`` calls load without any network access.

Every family has the same language model shape: hidden 64, 4 decoder layers,
MLP intermediate 128 (gate/up/down), 4 query heads and 2 KV heads (head_dim 16).
Vision towers are as small as the architectures allow (width 32, 2 layers).

Audio and video families: ``qwen2-audio`` (Whisper-style encoder, 4 s feature
window), ``llava-onevision`` (SigLIP tower, 32 px tiles, image + video) and
``qwen2.5-omni`` (the thinker only: audio encoder, vision encoder, language
model; no talker / token2wav, ``enable_audio_output`` is false).

Video note: transformers' video processors need torchvision. The saved files
are the upstream layout under the stock class names (so ``AutoProcessor`` works
wherever torchvision is installed); use :func:`load_processor`, which falls back
to the numpy video processors of :mod:`tamp.processors` where it is missing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
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
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    LlavaOnevisionProcessor,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2_5OmniConfig,
    Qwen2_5OmniForConditionalGeneration,
    Qwen2_5OmniProcessor,
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Tokenizer,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
    SiglipVisionConfig,
    WhisperFeatureExtractor,
)

from tamp.processors import LlavaOnevisionVideoProcessorNumpy, QwenVideoProcessorNumpy, load_processor

__all__ = [
    "TINY_FAMILIES",
    "Qwen2VLImageOnlyProcessor",
    "Qwen2_5_VLImageOnlyProcessor",
    "build_tiny",
    "load_processor",
]

TINY_FAMILIES: tuple[str, ...] = (
    "llava", "llava-next", "qwen2-vl", "qwen2.5-vl", "llama", "qwen2", "qwen2-audio", "llava-onevision", "qwen2.5-omni",
)

OMNI_SPEAKER_FILE = "spk_dict.pt"

_LLAMA_LIKE = ("llava", "llava-next", "llama")
_QWEN_LIKE = ("qwen2-vl", "qwen2.5-vl", "qwen2", "qwen2-audio", "llava-onevision", "qwen2.5-omni")

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

# SigLIP tower of LLaVA-OneVision: 32 px tiles of 4 x 4 patches -> 16 tokens per tile, 4 per video frame.
_SIGLIP_SHAPE: dict = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           patch_size=8, image_size=32)
_SIGLIP_MEAN = (0.5, 0.5, 0.5)
_ONEVISION_TILE = 32
_ONEVISION_PINPOINTS = tuple((a * 32, b * 32) for a in range(1, 4) for b in range(1, 4))

# Audio: 16 kHz Whisper log-mel features (128 bins, as the real models) over a 4 s window -> 400 frames,
# 100 encoder positions after the stride-2 conv; one LM token per 40 ms of actual audio.
_SAMPLING_RATE = 16_000
_MEL_BINS = 128
_AUDIO_WINDOW_S = 4
_AUDIO_FRAMES = _AUDIO_WINDOW_S * 100
_AUDIO_ENCODER: dict = dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                            num_mel_bins=_MEL_BINS)

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
_QWEN_AUDIO_SPECIALS = _QWEN_SPECIALS + ("<|audio_bos|>", "<|audio_eos|>", "<|AUDIO|>")
_ONEVISION_SPECIALS = _QWEN_SPECIALS + ("<image>", "<video>")
# Qwen2.5-Omni's own names; the processor reads them as tokenizer attributes (image_token, ...)
_OMNI_TOKENS = {
    "image_token": "<|IMAGE|>",
    "video_token": "<|VIDEO|>",
    "audio_token": "<|AUDIO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
}
_OMNI_SPECIALS = _QWEN_SPECIALS + tuple(_OMNI_TOKENS.values())

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
        specials, extra = _OMNI_SPECIALS, {"extra_special_tokens": dict(_OMNI_TOKENS)}
        media = ("'<|vision_bos|><|IMAGE|><|vision_eos|>'", "'<|vision_bos|><|VIDEO|><|vision_eos|>'",
                 "'<|audio_bos|><|AUDIO|><|audio_eos|>'")
    # As upstream Qwen: no bos token; eos is <|im_end|>, padding with <|endoftext|>.
    return PreTrainedTokenizerFast(
        tokenizer_object=_train_bpe(specials, prepend_bos=None, qwen_style=True),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=_MAX_LENGTH,
        chat_template=_chat_template(_CHATML_TEMPLATE, *media),
        **extra,
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
    images and text work on a torchvision-free install. Videos are not supported; they are
    only what the older tiny Qwen-VL builders save through (``load_processor`` now returns the
    stock class with a numpy video processor instead).
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


# ---------------------------------------------------------------------------
# Per-family builders: (model, processor or None)
# ---------------------------------------------------------------------------


def _llama_config(tok: PreTrainedTokenizerFast, family: str) -> LlamaConfig:
    return LlamaConfig(**_TEXT_SHAPE, **_special_ids(tok, family), vocab_size=len(tok))


def _qwen_text_kwargs(tok: PreTrainedTokenizerFast, family: str, mrope: bool = True) -> dict:
    rope = {"rope_type": "default", "rope_theta": 1e6}
    if mrope:
        rope["mrope_section"] = list(_MROPE_SECTION)
    return dict(
        **_TEXT_SHAPE,
        **_special_ids(tok, family),
        vocab_size=len(tok),
        max_window_layers=_TEXT_SHAPE["num_hidden_layers"],
        rope_parameters=rope,
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


def _whisper_features() -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor(feature_size=_MEL_BINS, sampling_rate=_SAMPLING_RATE, hop_length=160,
                                   chunk_length=_AUDIO_WINDOW_S, n_fft=400, padding_value=0.0)


def _qwen_video_processor() -> QwenVideoProcessorNumpy:
    """Saved under the stock name (Qwen2VLVideoProcessor); see tamp.processors."""
    return QwenVideoProcessorNumpy(
        size={"shortest_edge": _QWEN_MIN_PIXELS, "longest_edge": _QWEN_VIDEO_MAX_PIXELS},
        patch_size=14, temporal_patch_size=2, merge_size=2,
        image_mean=list(_CLIP_MEAN), image_std=list(_CLIP_STD),
    )


def _build_qwen2_audio(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, ProcessorMixin]:
    config = Qwen2AudioConfig(
        audio_config=dict(**_AUDIO_ENCODER, max_source_positions=_AUDIO_FRAMES // 2),
        text_config=dict(model_type="qwen2", **_qwen_text_kwargs(tok, "qwen2-audio", mrope=False)),
        audio_token_index=_token_id(tok, "<|AUDIO|>"),
    )
    config.tie_word_embeddings = False
    processor = Qwen2AudioProcessor(_whisper_features(), tok, chat_template=tok.chat_template)
    return Qwen2AudioForConditionalGeneration(config), processor


def _build_llava_onevision(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, ProcessorMixin]:
    pinpoints = [list(p) for p in _ONEVISION_PINPOINTS]
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**_SIGLIP_SHAPE),
        text_config=dict(model_type="qwen2", **_qwen_text_kwargs(tok, "llava-onevision", mrope=False)),
        image_token_index=_token_id(tok, "<image>"),
        video_token_index=_token_id(tok, "<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
        vision_aspect_ratio="anyres_max_9",
        tie_word_embeddings=False,
    )
    side = {"height": _ONEVISION_TILE, "width": _ONEVISION_TILE}
    image_processor = LlavaOnevisionImageProcessorPil(
        size=side, image_grid_pinpoints=pinpoints, image_mean=list(_SIGLIP_MEAN), image_std=list(_SIGLIP_MEAN),
    )
    video_processor = LlavaOnevisionVideoProcessorNumpy(
        size=side, image_mean=list(_SIGLIP_MEAN), image_std=list(_SIGLIP_MEAN),
    )
    processor = LlavaOnevisionProcessor(
        image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
        num_image_tokens=(_ONEVISION_TILE // _SIGLIP_SHAPE["patch_size"]) ** 2,
        vision_feature_select_strategy="full", chat_template=tok.chat_template, vision_aspect_ratio="anyres_max_9",
    )
    return LlavaOnevisionForConditionalGeneration(config), processor


def _build_qwen2_5_omni(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, ProcessorMixin]:
    ids = {name: _token_id(tok, token) for name, token in _OMNI_TOKENS.items()}
    thinker = dict(
        audio_config=dict(**_AUDIO_ENCODER, max_source_positions=_AUDIO_FRAMES // 2, n_window=50,
                          output_dim=_TEXT_SHAPE["hidden_size"]),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                           out_hidden_size=_TEXT_SHAPE["hidden_size"], patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1]),
        text_config=_qwen_text_kwargs(tok, "qwen2.5-omni"),
        audio_token_index=ids["audio_token"],
        image_token_index=ids["image_token"],
        video_token_index=ids["video_token"],
        audio_start_token_id=ids["audio_bos_token"],
        audio_end_token_id=ids["audio_eos_token"],
        vision_start_token_id=ids["vision_bos_token"],
        vision_end_token_id=ids["vision_eos_token"],
        user_token_id=_token_id(tok, "<|im_start|>"),
        position_id_per_seconds=25,
        seconds_per_chunk=2,
        tie_word_embeddings=False,
    )
    # The talker is never built (enable_audio_output=False); its config only gets ids inside this vocabulary.
    pad = _token_id(tok, "<|endoftext|>")
    talker = dict(
        tts_text_start_token_id=pad, tts_text_end_token_id=pad, tts_text_pad_token_id=pad,
        audio_token_index=ids["audio_token"], image_token_index=ids["image_token"],
        video_token_index=ids["video_token"], audio_start_token_id=ids["audio_bos_token"],
        audio_end_token_id=ids["audio_eos_token"], vision_start_token_id=ids["vision_bos_token"],
        vision_end_token_id=ids["vision_eos_token"],
    )
    config = Qwen2_5OmniConfig(thinker_config=thinker, talker_config=talker, enable_audio_output=False)
    processor = Qwen2_5OmniProcessor(
        image_processor=_qwen_image_processor(), video_processor=_qwen_video_processor(),
        feature_extractor=_whisper_features(), tokenizer=tok, chat_template=tok.chat_template,
    )
    return Qwen2_5OmniForConditionalGeneration(config), processor


_BUILDERS = {
    "llava": _build_llava,
    "llava-next": _build_llava_next,
    "qwen2-vl": _build_qwen2_vl,
    "qwen2.5-vl": _build_qwen2_5_vl,
    "llama": _build_llama,
    "qwen2": _build_qwen2,
    "qwen2-audio": _build_qwen2_audio,
    "llava-onevision": _build_llava_onevision,
    "qwen2.5-omni": _build_qwen2_5_omni,
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
    if family == "qwen2.5-omni":
        # Qwen2_5OmniForConditionalGeneration.from_pretrained insists on the talker's speaker file and generate()
        # on a known speaker, even with the talker disabled; placeholders do (only the talker reads them).
        speakers = {name: {"cond": torch.zeros(1, 4), "ref_mel": torch.zeros(1, 4, 4), "bos_token": 0}
                    for name in ("Chelsie", "Ethan")}
        torch.save(speakers, out / OMNI_SPEAKER_FILE)
    return out
