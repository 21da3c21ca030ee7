"""Tests for tamp.testing.tiny: tiny offline checkpoints load, run and are reproducible."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
)
from transformers.utils import is_torchvision_available

from tamp.families.registry import tiny_families
from tamp.processors import load_processor
from tamp.testing.tiny import build_tiny

MULTIMODAL = ("llava", "llava-next", "qwen2-vl", "qwen2.5-vl", "smolvlm")
AUDIO_VIDEO = ("qwen2-audio", "llava-onevision", "qwen2.5-omni")  # more in test_av_families.py
# multimodal families whose tiny build is tested in tests/tamp/models/test_family_*.py
OWN_TESTS = ("qwen3-vl", "internvl3", "gemma3")
TEXT_ONLY = ("llama", "qwen2")
QWEN_VL = ("qwen2-vl", "qwen2.5-vl")

# Image tokens produced by one 112 x 112 image (see tamp.testing.tiny for the geometry).
IMAGE_TOKENS_112 = {"llava": 36, "llava-next": 88, "qwen2-vl": 16, "qwen2.5-vl": 16,
                    "smolvlm": 80}  # SmolVLM: 2 x 2 tiles + the global image, 16 tokens each

ROUND_TRIP_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Zebras graze quietly; xylophones jingle!  Double  spaces and trailing space ",
    "Numbers 0123456789, symbols #$%&*()[]{}<>=+-_/\\|~^`@ and quotes 'single' \"double\"",
    "Tabs\tand\nnewlines\r\n and unicode: café, naïve, Straße, 東京, 🙂🚀",
    "",
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every family built once with the default seed."""
    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny(family, root / family) for family in tiny_families()}


def _test_image(width: int = 112, height: int = 112) -> Image.Image:
    """A deterministic RGB gradient."""
    pixels = bytes(
        channel
        for y in range(height)
        for x in range(width)
        for channel in ((7 * x) % 256, (5 * y) % 256, (3 * (x + y)) % 256)
    )
    return Image.frombytes("RGB", (width, height), pixels)


def _chat(image: Image.Image | None = None) -> list[dict]:
    user: list[dict] = [{"type": "text", "text": "What is in the picture?"}]
    if image is not None:
        user.insert(0, {"type": "image", "image": image})
    return [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": user},
    ]


def _image_feature_rows(model, inputs) -> int:
    """Number of LM positions the vision side fills for ``inputs``."""
    kwargs = {k: inputs[k] for k in ("pixel_values", "image_sizes", "image_grid_thw") if k in inputs}
    with torch.no_grad():
        features = model.get_image_features(**kwargs).pooler_output
    if isinstance(features, torch.Tensor):
        features = [features]
    return sum(f.reshape(-1, f.shape[-1]).shape[0] for f in features)


def _decoder_layers(model) -> torch.nn.ModuleList:
    inner = model.model
    if hasattr(inner, "text_model"):  # SmolVLM
        return inner.text_model.layers
    return inner.language_model.layers if hasattr(inner, "language_model") else inner.layers


# ---------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------


def test_families_constant() -> None:
    assert tiny_families() == ("llava", "llava-next", "qwen2-vl", "qwen2.5-vl", "llama", "qwen2", *AUDIO_VIDEO,
                               *OWN_TESTS, "smolvlm")


def test_unknown_family_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        build_tiny("gpt-17", tmp_path / "x")
    message = str(info.value)
    assert "\n" not in message
    assert all(family in message for family in tiny_families())
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------
# Files, configs, determinism
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", tiny_families())
def test_files_and_config(built: dict[str, Path], family: str) -> None:
    out = built[family]
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= names
    assert ("processor_config.json" in names) == (family in MULTIMODAL + AUDIO_VIDEO + OWN_TESTS)
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}

    config = AutoConfig.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    text = config.get_text_config()
    assert (text.hidden_size, text.num_hidden_layers, text.intermediate_size) == (64, 4, 128)
    assert (text.num_attention_heads, text.num_key_value_heads) == (4, 2)
    assert text.vocab_size >= len(tok)
    assert text.eos_token_id == tok.eos_token_id
    assert text.pad_token_id == tok.pad_token_id
    if family in ("llava", "llava-next", "llama", "smolvlm", "gemma3"):
        assert text.bos_token_id == tok.bos_token_id
    else:  # Qwen: no tokenizer bos, config bos is <|endoftext|>
        assert text.bos_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
    if family in ("llava", "llava-next"):
        assert config.image_token_id == config.image_token_index == tok.convert_tokens_to_ids("<image>")
    if family in QWEN_VL:
        assert config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
        assert config.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
        assert config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
        assert config.vision_end_token_id == tok.convert_tokens_to_ids("<|vision_end|>")
        head_dim = text.hidden_size // text.num_attention_heads
        assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    if family == "llava-next":
        image_processor = AutoProcessor.from_pretrained(out).image_processor
        assert config.image_grid_pinpoints == image_processor.image_grid_pinpoints


@pytest.mark.parametrize("family", tiny_families())
def test_deterministic(built: dict[str, Path], tmp_path: Path, family: str) -> None:
    before = torch.random.get_rng_state()
    again = build_tiny(family, tmp_path / "again", seed=0)
    other = build_tiny(family, tmp_path / "other", seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)  # caller's RNG untouched
    for path in built[family].iterdir():
        assert (again / path.name).read_bytes() == path.read_bytes(), path.name
    weights = built[family] / "model.safetensors"
    assert (other / "model.safetensors").read_bytes() != weights.read_bytes()


# ---------------------------------------------------------------------------
# Tokenizer and chat template
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", tiny_families())
def test_tokenizer_round_trip(built: dict[str, Path], family: str) -> None:
    tok = AutoTokenizer.from_pretrained(built[family])
    assert 300 <= len(tok) <= 600
    for text in ROUND_TRIP_TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id is None or tok.unk_token_id not in ids
        assert tok.decode(ids) == text
    specials = ["<image>"] if family in ("llava", "llava-next") else []
    if family in QWEN_VL:
        specials = ["<|vision_start|>", "<|image_pad|>", "<|video_pad|>", "<|vision_end|>"]
    for special in specials:
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1


@pytest.mark.parametrize("family", tiny_families())
def test_chat_template(built: dict[str, Path], family: str) -> None:
    tok = AutoTokenizer.from_pretrained(built[family])
    as_list = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "Hi?"}]},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye?"},
    ]
    with_prompt = tok.apply_chat_template(as_list, tokenize=False, add_generation_prompt=True)
    without = tok.apply_chat_template(as_list, tokenize=False)
    assert with_prompt.startswith(without) and len(with_prompt) > len(without)
    for piece in ("Be brief.", "Hi?", "Hello.", "Bye?"):
        assert piece in without
    if family in ("llava", "llava-next"):
        assert without.count("<image>") == 1
    if family in QWEN_VL:
        assert without.count("<|image_pad|>") == 1 and without.count("<|video_pad|>") == 1
    if family in ("llama", "qwen2"):
        assert "<image>" not in without and "<|image_pad|>" not in without
    with pytest.raises(Exception, match="role"):
        tok.apply_chat_template([{"role": "human", "content": "hi"}], tokenize=False)


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", MULTIMODAL)
def test_multimodal_forward_and_generate(built: dict[str, Path], family: str) -> None:
    out = built[family]
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    assert next(model.parameters()).dtype == torch.float32
    layers = _decoder_layers(model)
    assert len(layers) == 4
    attn, mlp = layers[0].self_attn, layers[0].mlp
    assert attn.k_proj.out_features == attn.v_proj.out_features == 32  # 2 KV heads x 16
    assert (attn.q_proj.out_features, attn.o_proj.in_features) == (64, 64)
    assert (mlp.gate_proj.out_features, mlp.up_proj.out_features, mlp.down_proj.in_features) == (128, 128, 128)

    processor = load_processor(out)
    # SmolVLM's stock processor needs num2words and torchvision (tamp.models.smolvlm_processor)
    if family != "smolvlm" and (family not in QWEN_VL or is_torchvision_available()):
        assert type(AutoProcessor.from_pretrained(out)) is type(processor)
    assert processor.chat_template and processor.chat_template == processor.tokenizer.chat_template

    inputs = processor.apply_chat_template(
        _chat(_test_image()), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    n_image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_image_tokens == IMAGE_TOKENS_112[family]
    assert n_image_tokens == _image_feature_rows(model, inputs)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape
    assert torch.isfinite(logits).all()
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert 1 <= generated.shape[1] - inputs["input_ids"].shape[1] <= 3

    # Direct call with a non-square image: placeholder count still matches the vision side.
    prompt = processor.apply_chat_template(_chat(_test_image()), add_generation_prompt=True)
    direct = processor(text=[prompt], images=[_test_image(128, 96)], return_tensors="pt")
    n_image_tokens = int((direct["input_ids"] == model.config.image_token_id).sum())
    assert n_image_tokens == _image_feature_rows(model, direct)
    with torch.no_grad():
        assert torch.isfinite(model(**direct).logits).all()


@pytest.mark.parametrize("family", TEXT_ONLY)
def test_text_forward_and_generate(built: dict[str, Path], family: str) -> None:
    out = built[family]
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert len(_decoder_layers(model)) == 4
    inputs = tok.apply_chat_template(
        _chat(), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (*inputs["input_ids"].shape, model.config.vocab_size)
    assert torch.isfinite(logits).all()
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert 1 <= generated.shape[1] - inputs["input_ids"].shape[1] <= 3

    batch = tok(["short", "a somewhat longer prompt"], padding=True, return_tensors="pt")
    assert batch["attention_mask"][0, 0] == 0  # left padding
    assert model.generate(**batch, max_new_tokens=2, do_sample=False).shape[0] == 2


@pytest.mark.parametrize("family", QWEN_VL)
def test_qwen_processor_files_are_stock(built: dict[str, Path], family: str) -> None:
    """Saved files name the upstream processor and carry a video processor config."""
    saved = json.loads((built[family] / "processor_config.json").read_text())
    assert saved["processor_class"] == {"qwen2-vl": "Qwen2VLProcessor", "qwen2.5-vl": "Qwen2_5_VLProcessor"}[family]
    assert saved["video_processor"]["video_processor_type"] == "Qwen2VLVideoProcessor"
    assert saved["image_processor"]["patch_size"] * saved["image_processor"]["merge_size"] == 28
