"""Section 5: the TAMP preset on llama3-llava-next-8b's language model, random bf16 weights, LLaVA-NeXT token layout.

No download: the LlamaConfig of the paper's model (hidden 4096, 32 layers, 32 heads, 8 KV heads, intermediate
14336, vocab 128256, rope_theta 500000) is instantiated with random weights directly on the device. Each of the
128 samples is ~100 text tokens around ~2,880 image tokens (LLaVA-NeXT's anyres grid). Image positions carry
token ids from a reserved id range, and the ModelAdapter is built with those ids as `media_token_ids["image"]`,
so `ModelAdapter.token_masks` (hence AMIA and DAS) sees the image / text split exactly as for the real model.
Image ids are drawn from a few dozen "visual words" per sample, so image tokens form clusters like real patches.

The scaled-down variant (`--dry`, or `--layers/--samples/--tokens`) runs the very same code on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from bench.common import Phase, measured, peak_gpu_mb

SECTION = "8b"
TARGET_TOTAL_S = 180.0  # whole TAMP prune on one H100
TARGET_GPU_GB = 20.0
IMAGE_ID_RANGE = (120_000, 128_000)  # token ids standing for image positions (inside the 128256 vocab)
TEXT_ID_RANGE = (1_000, 100_000)
VISUAL_WORDS = 48  # distinct image ids per sample


@dataclass(frozen=True)
class Shape8B:
    """Model and calibration shape; the defaults are the real llama3-llava-next-8b language model."""

    hidden: int = 4096
    layers: int = 32
    heads: int = 32
    kv_heads: int = 8
    intermediate: int = 14336
    vocab: int = 128256
    rope_theta: float = 500000.0
    samples: int = 128
    tokens: int = 2980  # per sample: ~2,880 image + ~100 text
    dtype: str = "bfloat16"

    @property
    def n_text(self) -> int:
        return max(2, round(self.tokens * 100 / 2980))

    @property
    def n_image(self) -> int:
        return self.tokens - self.n_text


FULL = Shape8B()
# the CPU stand-in: same vocabulary, ids and token layout, tiny width
DRY = Shape8B(hidden=256, layers=2, heads=4, kv_heads=1, intermediate=896, samples=2, tokens=300)


def llama_config(shape: Shape8B) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=shape.hidden, num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads, intermediate_size=shape.intermediate, vocab_size=shape.vocab,
        max_position_embeddings=max(8192, shape.tokens), rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta}, hidden_act="silu",
        attention_bias=False, mlp_bias=False, bos_token_id=128000, eos_token_id=128009,
    )


def build_model(shape: Shape8B, device: torch.device) -> nn.Module:
    """Random-weight LlamaForCausalLM built on `device` (fast init there), then parked on the CPU for offload."""
    from transformers import LlamaForCausalLM

    dtype = getattr(torch, shape.dtype)
    config = llama_config(shape)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.02)
            else:
                p.fill_(1.0)  # RMSNorm weights
    model.eval()
    if device.type != "cpu":
        model.to("cpu")
        torch.cuda.empty_cache()
    return model


def make_batches(shape: Shape8B, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """One sample per batch (as `tamp prune` runs multimodal samples): text prefix, image, question/answer."""
    g = torch.Generator().manual_seed(seed)
    prefix = max(1, shape.n_text // 5)
    batches = []
    for _ in range(shape.samples):
        words = torch.randint(*IMAGE_ID_RANGE, (VISUAL_WORDS,), generator=g)
        run = 8  # neighbouring patches share a visual word
        image = words[torch.randint(0, VISUAL_WORDS, ((shape.n_image + run - 1) // run,), generator=g)]
        image = image.repeat_interleave(run)[: shape.n_image]
        text = torch.randint(*TEXT_ID_RANGE, (shape.n_text,), generator=g)
        ids = torch.cat([text[:prefix], image, text[prefix:]]).unsqueeze(0)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return batches


def make_adapter() -> Any:
    """The llava-next language model's adapter with the image-id range registered as the image modality."""
    from tamp.models.adapters import ModelAdapter

    return ModelAdapter("llava-next-lm (synthetic)", ("model",), (), {"image": list(range(*IMAGE_ID_RANGE))})


def run(device: torch.device, shape: Shape8B = FULL, method: str = "tamp", offload: bool = True) -> list[Phase]:
    """Build, calibrate, prune with `method` through prune_model(offload=...); per-phase timings and peaks."""
    from tamp.engine.sequential import prune_model
    from tamp.recipe import resolve_parts, weight_config

    sizes = {"hidden": shape.hidden, "layers": shape.layers, "heads": shape.heads, "kv_heads": shape.kv_heads,
             "intermediate": shape.intermediate, "vocab": shape.vocab, "samples": shape.samples,
             "tokens_per_sample": shape.tokens, "image_tokens": shape.n_image, "text_tokens": shape.n_text,
             "dtype": shape.dtype, "offload": offload, "method": method}
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # as `tamp prune` does (SparseGPT reference numerics)
        torch.backends.cudnn.allow_tf32 = False
    build = Phase(SECTION, f"build random {shape.layers}-layer llava-next LM ({shape.dtype})", details=dict(sizes))
    model = None
    with measured(build, device):
        model = build_model(shape, device)
        build.details["params"] = sum(p.numel() for p in model.parameters())
    if build.status != "ok" or model is None:
        return [build]
    batches = make_batches(shape)
    adapter = make_adapter()
    masks = adapter.token_masks(batches[0]["input_ids"])
    build.details["image_tokens_recognised"] = int(masks.get("image", torch.zeros(1)).sum())
    cfg = weight_config(method, sparsity=0.5, calib="synthetic-llava-next-layout",
                                  nsamples=shape.samples, seqlen=shape.tokens, seed=0)
    prune = Phase(SECTION, f"{method} prune_model(offload={offload})", details=dict(sizes))
    if device.type == "cuda":
        torch.cuda.empty_cache()
    with measured(prune, device):
        result = prune_model(model, adapter, batches, cfg, resolve_parts(cfg), device, offload=offload)
        timings = {k: round(v, 4) for k, v in result.timings.items()}
        prune.details["engine_timings"] = timings
        prune.details["token_counts"] = dict(result.token_counts)
        prune.details.update({k: v for k, v in result.details.items() if isinstance(v, (int, float, str, bool))})
    if prune.status == "ok" and prune.wall_s is not None:
        prune.details["unattributed_s"] = prune.wall_s - sum(prune.details["engine_timings"].values())
        full_size = replace(shape, samples=FULL.samples, tokens=FULL.tokens) == FULL and shape.samples >= FULL.samples
        if full_size and device.type == "cuda":  # the targets only mean something for the real shape on a GPU
            prune.target, prune.met = TARGET_TOTAL_S, prune.wall_s <= TARGET_TOTAL_S
        else:
            prune.details["targets_apply"] = "only to the full shape on CUDA"
        gpu = peak_gpu_mb(device)
        if gpu is not None and full_size:
            prune.details["gpu_target_gb"] = TARGET_GPU_GB
            prune.details["gpu_met"] = (prune.peak_gpu_mb or gpu) / 1024 <= TARGET_GPU_GB
        linears = [m for layer in adapter.language_stack(model).layers for m in layer.modules()
                   if isinstance(m, nn.Linear)]
        zeros = sum(int((m.weight == 0).sum()) for m in linears)
        prune.details["sparsity"] = zeros / max(1, sum(m.weight.numel() for m in linears))
    del model
    return [build, prune]


def shape_from_args(dry: bool, layers: int | None, samples: int | None, tokens: int | None) -> Shape8B:
    """FULL (or DRY with --dry), with any of layers / samples / tokens overridden."""
    shape = DRY if dry else FULL
    overrides = {k: v for k, v in (("layers", layers), ("samples", samples), ("tokens", tokens)) if v is not None}
    return replace(shape, **overrides)


def describe(shape: Shape8B) -> str:
    return (f"{shape.layers} layers x hidden {shape.hidden} (interm. {shape.intermediate}, {shape.heads}/{shape.kv_heads}"
            f" heads, vocab {shape.vocab}), {shape.samples} samples x {shape.tokens} tokens "
            f"({shape.n_image} image + {shape.n_text} text), {shape.dtype}")

