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
wherever torchvision is installed); use :func:`tamp.processors.load_processor`, which
falls back to the numpy video processors of :mod:`tamp.processors` where it is missing.

This is test scaffolding, kept out of the library's save, load and evaluation paths: only
building a missing ``tiny-<family>`` model (``tamp.models.loading``) and ``tamp build-tiny``
import it, lazily. Which families have a tiny build, with which builder function and tokenizer
recipe, is each family module's (``tamp.families``, its ``TinyBuild``); the built-in families'
builders are this module's ``build_<family>`` functions, their tokenizers
``tamp.testing.tiny_tokenizers``'.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import torch
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
    Qwen2_5OmniConfig,
    Qwen2_5OmniForConditionalGeneration,
    Qwen2_5OmniProcessor,
    Qwen2AudioConfig,
    Qwen2AudioForConditionalGeneration,
    Qwen2AudioProcessor,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    SiglipVisionConfig,
    WhisperFeatureExtractor,
)

from tamp.errors import TampError
from tamp.families.qwen2_5_omni import SPEAKER_FILE
from tamp.families.registry import families, tiny_families
from tamp.models.qwen_image_only import (
    IMAGE_ONLY_PROCESSORS,
    QWEN_MIN_PIXELS,
    QWEN_VIDEO_MAX_PIXELS,
    Qwen2_5_VLImageOnlyProcessor,
    Qwen2VLImageOnlyProcessor,
    restore_stock_processor_files,
)
from tamp.processors import CLIP_MEAN, CLIP_STD, LlavaOnevisionVideoProcessorNumpy, QwenVideoProcessorNumpy
from tamp.testing.tiny_tokenizers import MAX_LENGTH, OMNI_TOKENS, QWEN_LIKE, make_tokenizer, special_ids, token_id

__all__ = ["build_tiny"]

# ---------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------

_TEXT_SHAPE: dict = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=MAX_LENGTH,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)
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
_LLAVA_IMAGE_SIZE = 48  # 6 x 6 patches -> 36 image tokens for any image
_LLAVA_NEXT_TILE = 32  # 4 x 4 patches per tile
_LLAVA_NEXT_PINPOINTS = ((32, 64), (64, 32), (64, 64))  # multiples of the tile

# Qwen: patch 14 x merge 2 -> one LM token per 28 x 28 pixels; at least 56 x 56 pixels (QWEN_MIN_PIXELS) and at
# most 16 tokens per video frame pair (QWEN_VIDEO_MAX_PIXELS), both owned by tamp.models.qwen_image_only.
_QWEN_MAX_PIXELS = 28 * 28 * 64  # at most 64 tokens per image

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
# Per-family builders: (model, processor or None)
# ---------------------------------------------------------------------------


def _qwen_image_processor() -> Qwen2VLImageProcessorPil:
    return Qwen2VLImageProcessorPil(
        size={"shortest_edge": QWEN_MIN_PIXELS, "longest_edge": _QWEN_MAX_PIXELS},
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )



# ---------------------------------------------------------------------------
# Per-family builders: (model, processor or None)
# ---------------------------------------------------------------------------


def _llama_config(tok: PreTrainedTokenizerFast, family: str) -> LlamaConfig:
    return LlamaConfig(**_TEXT_SHAPE, **special_ids(tok, family), vocab_size=len(tok))


def _qwen_text_kwargs(tok: PreTrainedTokenizerFast, family: str, mrope: bool = True) -> dict:
    rope = {"rope_type": "default", "rope_theta": 1e6}
    if mrope:
        rope["mrope_section"] = list(_MROPE_SECTION)
    return dict(
        **_TEXT_SHAPE,
        **special_ids(tok, family),
        vocab_size=len(tok),
        max_window_layers=_TEXT_SHAPE["num_hidden_layers"],
        rope_parameters=rope,
    )


def _qwen_vl_token_ids(tok: PreTrainedTokenizerFast) -> dict[str, int]:
    return dict(
        image_token_id=token_id(tok, "<|image_pad|>"),
        video_token_id=token_id(tok, "<|video_pad|>"),
        vision_start_token_id=token_id(tok, "<|vision_start|>"),
        vision_end_token_id=token_id(tok, "<|vision_end|>"),
    )


def _llava_common(tok: PreTrainedTokenizerFast, family: str, image_size: int) -> dict:
    """Config fields shared by LLaVA and LLaVA-NeXT."""
    return dict(
        vision_config=CLIPVisionConfig(**_CLIP_SHAPE, image_size=image_size),
        text_config=_llama_config(tok, family),
        image_token_index=token_id(tok, "<image>"),
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


def build_llava(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, ProcessorMixin]:
    side = _LLAVA_IMAGE_SIZE
    config = LlavaConfig(**_llava_common(tok, "llava", side))
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": side},
        crop_size={"height": side, "width": side},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    processor = LlavaProcessor(image_processor=image_processor, **_llava_processor_kwargs(tok))
    return LlavaForConditionalGeneration(config), processor


def build_llava_next(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, ProcessorMixin]:
    side = _LLAVA_NEXT_TILE
    config = LlavaNextConfig(
        **_llava_common(tok, "llava-next", side),
        image_grid_pinpoints=[list(p) for p in _LLAVA_NEXT_PINPOINTS],
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": side},
        crop_size={"height": side, "width": side},
        image_grid_pinpoints=[list(p) for p in _LLAVA_NEXT_PINPOINTS],
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    processor = LlavaNextProcessor(image_processor=image_processor, **_llava_processor_kwargs(tok))
    return LlavaNextForConditionalGeneration(config), processor


def build_qwen2_vl(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, ProcessorMixin]:
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


def build_qwen2_5_vl(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, ProcessorMixin]:
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


def build_llama(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, None]:
    return LlamaForCausalLM(_llama_config(tok, "llama")), None


def build_qwen2(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, None]:
    config = Qwen2Config(
        **_TEXT_SHAPE,
        **special_ids(tok, "qwen2"),
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
        size={"shortest_edge": QWEN_MIN_PIXELS, "longest_edge": QWEN_VIDEO_MAX_PIXELS},
        patch_size=14, temporal_patch_size=2, merge_size=2,
        image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD),
    )


def build_qwen2_audio(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, ProcessorMixin]:
    config = Qwen2AudioConfig(
        audio_config=dict(**_AUDIO_ENCODER, max_source_positions=_AUDIO_FRAMES // 2),
        text_config=dict(model_type="qwen2", **_qwen_text_kwargs(tok, "qwen2-audio", mrope=False)),
        audio_token_index=token_id(tok, "<|AUDIO|>"),
    )
    config.tie_word_embeddings = False
    processor = Qwen2AudioProcessor(_whisper_features(), tok, chat_template=tok.chat_template)
    return Qwen2AudioForConditionalGeneration(config), processor


def build_llava_onevision(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, ProcessorMixin]:
    pinpoints = [list(p) for p in _ONEVISION_PINPOINTS]
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**_SIGLIP_SHAPE),
        text_config=dict(model_type="qwen2", **_qwen_text_kwargs(tok, "llava-onevision", mrope=False)),
        image_token_index=token_id(tok, "<image>"),
        video_token_index=token_id(tok, "<video>"),
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


def build_qwen2_5_omni(tok: PreTrainedTokenizerFast) -> tuple[PreTrainedModel, ProcessorMixin]:
    ids = {name: token_id(tok, token) for name, token in OMNI_TOKENS.items()}
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
        user_token_id=token_id(tok, "<|im_start|>"),
        position_id_per_seconds=25,
        seconds_per_chunk=2,
        tie_word_embeddings=False,
    )
    # The talker is never built (enable_audio_output=False); its config only gets ids inside this vocabulary.
    pad = token_id(tok, "<|endoftext|>")
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


Builder = Callable[[PreTrainedTokenizerFast], tuple[PreTrainedModel, ProcessorMixin | None]]


def _builder(family: str, path: str) -> Builder:
    """A family's ``module:function`` builder (this module's for the built-in families, a plugin's own for others);
    one that cannot be imported is the plugin's mistake, said in one line."""
    module, _, function = path.partition(":")
    try:
        return getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as exc:
        raise TampError(f"family '{family}': its tiny builder {path!r} cannot be imported ({exc})") from None


def _generation_config(tok: PreTrainedTokenizerFast, family: str) -> GenerationConfig:
    """Greedy decoding; Qwen stops on ``<|im_end|>`` or ``<|endoftext|>``."""
    ids = special_ids(tok, family)
    eos: int | list[int] = ids["eos_token_id"]
    if family in QWEN_LIKE:
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
    row = families().get(family)
    if row is None or row.tiny is None:
        raise ValueError(f"unknown tiny family {family!r}; known families: {', '.join(tiny_families())}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    tok = make_tokenizer(row.tiny.tokenizer)
    build = _builder(family, row.tiny.builder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device("cpu"):
            model, processor = build(tok)
    model = model.to(torch.float32).eval()
    model.config.dtype = torch.float32
    model.generation_config = _generation_config(tok, row.tiny.tokenizer)

    model.save_pretrained(out)
    tok.save_pretrained(out)
    if processor is not None:
        processor.save_pretrained(out)
        if model.config.model_type in IMAGE_ONLY_PROCESSORS:
            restore_stock_processor_files(out, model.config.model_type)
    if SPEAKER_FILE in row.extra_files:
        # Qwen2_5OmniForConditionalGeneration.from_pretrained insists on the talker's speaker file and generate()
        # on a known speaker, even with the talker disabled; placeholders do (only the talker reads them).
        speakers = {name: {"cond": torch.zeros(1, 4), "ref_mel": torch.zeros(1, 4, 4), "bos_token": 0}
                    for name in ("Chelsie", "Ethan")}
        torch.save(speakers, out / SPEAKER_FILE)
    return out
