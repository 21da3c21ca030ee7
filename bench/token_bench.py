"""Section `tokens`: prefill time and FLOPs against the fraction of visual tokens FastV keeps, AIM's stages, YOPO.

A random LLaVA-1.5-style model (a small CLIP tower, so the cost sits in the language model) prefills one
image prompt with FastV at several keep fractions, then with AIM (merging alone, pruning alone, both, at its
defaults: 25% left after merging, pruning from half the depth, 1/8 fewer per layer), then with YOPO at its
defaults (visual tokens through half of each MLP, stopped where 25% of their linear FLOPs is spent); each is
timed (median of
repeats) beside its analytic FLOPs (the methods' own scoring included), so the measured speed-up can be set
against the FLOP ratio. `--size cpu`: a 100M-parameter decoder that fits
a laptop; `--size 8b`: llama3-8b's decoder shape (4 of its 32 layers) with 2,880 visual tokens, on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.common import Phase, measured
from tamp.inference.flops import ModelShape
from tamp.models.adapters import get_adapter
from tamp.token_transform import TokenTransform

KEEPS = (1.0, 0.75, 0.5, 0.25)
AIM_CASES = (("merge", "AIM merge only (25% left)"), ("prune", "AIM prune only"), ("merge+prune", "AIM merge + prune"))


@dataclass(frozen=True)
class TokenShape:
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    layers: int
    visual: int  # visual tokens in the prompt
    text: int  # text tokens around them
    dtype: str


SHAPES = {
    "cpu": TokenShape(hidden=1024, intermediate=2816, heads=16, kv_heads=16, layers=8, visual=576, text=64,
                      dtype="float32"),
    "8b": TokenShape(hidden=4096, intermediate=14336, heads=32, kv_heads=8, layers=4, visual=2880, text=64,
                     dtype="bfloat16"),
}


def build(shape: TokenShape, device: torch.device) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The random model and one prompt: `text/2` tokens, the visual tokens, `text/2` tokens."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    image_token = 32000
    text_config = LlamaConfig(vocab_size=32064, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                              num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                              num_key_value_heads=shape.kv_heads, max_position_embeddings=8192)
    vision_config = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                     num_attention_heads=2, image_size=336, patch_size=14, projection_dim=64)
    config = LlavaConfig(vision_config=vision_config, text_config=text_config, image_token_id=image_token,
                         image_seq_length=576, vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(0)
    dtype = getattr(torch, shape.dtype)
    with torch.device(device):  # built where it runs, in its dtype: a 7B shape initialises in seconds on a GPU
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype).eval()
    model.set_attn_implementation("sdpa")
    images = shape.visual // 576
    half = shape.text // 2
    ids = torch.cat([torch.randint(100, 30000, (half,)), torch.full((images * 576,), image_token),
                     torch.randint(100, 30000, (half,))]).unsqueeze(0)
    pixels = torch.randn(images, 3, 336, 336, dtype=dtype)
    return model, {"input_ids": ids.to(device), "pixel_values": pixels.to(device)}


def run(size: str, device: torch.device, repeats: int = 3, shape: TokenShape | None = None) -> list[Phase]:
    shape = shape or SHAPES[size]
    model, inputs = build(shape, device)
    adapter = get_adapter(model)
    flops_shape = ModelShape.of(model, adapter)
    phases: list[Phase] = []
    unit_s = unit_flops = None
    cases = [(f"prefill, FastV keep {keep:.0%} of {shape.visual} visual", "fastv", {"fastv_keep": keep})
             for keep in KEEPS]
    # our readings (`removal`): the release's AIM merges video frames only (this prompt is an image), and the
    # release's YOPO keeps the visual tokens in every layer; the bench measures what removing them saves
    cases += [(f"prefill, {label} of {shape.visual} visual", "aim", {"aim_stages": stages, "aim_semantics": "removal"})
              for stages, label in AIM_CASES]
    cases += [(f"prefill, YOPO layers+ffn removal (budget 25%, FFN 50%) of {shape.visual} visual", "yopo",
               {"yopo_strategies": "layers+ffn", "yopo_semantics": "removal"})]  # heads and window need a fit
    for name, method, params in cases:
        phase = Phase("tokens", name)
        dropper = TokenTransform.build(method, params).install(model)
        try:
            with torch.inference_mode():
                model(**inputs, logits_to_keep=1)  # warm-up (logits of the last position, as generation asks)
                for _ in range(repeats):
                    with measured(phase, device):
                        model(**inputs, logits_to_keep=1)
        finally:
            dropper.remove()
        stats = dropper.history[-1]
        flops = flops_shape.prefill(stats.tokens_per_layer, 1)["dense"] + stats.scoring_flops - stats.skipped_flops
        if unit_s is None:
            unit_s, unit_flops = phase.wall_s, flops
        phase.set_ratio(unit_s, "keep 100%")
        phase.details.update({"method": method, "params": params, "keep": params.get("fastv_keep"),
                              "tokens_per_layer": stats.tokens_per_layer,
                              "visual_per_layer": stats.visual_kept_per_layer, "prefill_tflops": flops / 1e12,
                              "scoring_tflops": stats.scoring_flops / 1e12, "skipped_tflops": stats.skipped_flops / 1e12,
                              "flop_ratio": flops / unit_flops,
                              "shape": shape.__dict__})
        phases.append(phase)
    return phases
