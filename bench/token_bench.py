"""Section `tokens`: every token method's prefill time against its FLOPs, at the field's three budgets.

A random LLaVA-1.5-style model (a small CLIP tower, so the cost sits in the language model) prefills one
image prompt of 576 visual tokens dense, then with every registered token method: a method that maps the common
token budget (`token_budget`, tamp/methods/base.py) at each of BUDGETS (192 / 128 / 64 of 576 kept), one whose
settings fix no token count once at its bench settings (AIM merging and pruning, YOPO's layers and half-MLPs, both
with the visual tokens removed: the release's AIM merges video frames only and the release's YOPO keeps the visual
tokens). Each is timed (median of `repeats`, 11 by default) beside its FLOPs (the language model's from the tokens
each layer ran on, the method's own scoring, the vision encoder and projector), so the measured time ratio to
dense can be set against the FLOP ratio: the target is time ratio <= 1.15 x FLOP ratio, judged on the process's
CPU time (`run`: rounds over every case, so load from other jobs falls on all alike; the wall clock beside it). A
case that misses it is profiled once (torch.profiler, the top operators by self CPU time in its details) to name
the cause.
`--size cpu`: a 100M-parameter decoder that fits a laptop; `--size 8b`: llama3-8b's decoder shape (4 of its 32
layers) with 2,880 visual tokens, on a GPU.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from bench.common import Phase, measured
from tamp.inference.flops import ModelShape
from tamp.inference.vision_flops import VisionMeter
from tamp.models.adapters import get_adapter
from tamp.token_transform import TokenTransform

BUDGETS = (0.333, 0.222, 0.111)
SLACK = 1.15  # the time ratio may exceed the FLOP ratio by this factor
# methods that set no token count: the bench's settings (their tokens removed, as the FLOP count assumes)
OWN_SETTINGS = {"aim": ("AIM merge + prune, removal", {"aim_stages": "merge+prune", "aim_semantics": "removal"}),
                "yopo": ("YOPO layers+ffn removal (budget 25%, FFN 50%)",  # heads and window need a fit
                         {"yopo_strategies": "layers+ffn", "yopo_semantics": "removal"})}
TOP_OPS = 8


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
    # the cpu shape at half the width and half the depth (1/8 of its linear FLOPs): the section in minutes on a
    # busy 2-core machine (`python -m bench.run --sections tokens --token-shape cpu-quick`)
    "cpu-quick": TokenShape(hidden=512, intermediate=1408, heads=8, kv_heads=8, layers=4, visual=576, text=64,
                            dtype="float32"),
    "8b": TokenShape(hidden=4096, intermediate=14336, heads=32, kv_heads=8, layers=4, visual=2880, text=64,
                     dtype="bfloat16"),
}


def build(shape: TokenShape, device: torch.device) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The random model and one prompt: `text/2` tokens, the visual tokens (a text token between images), `text/2`
    tokens."""
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
    # one text token between images, as a chat prompt has ("<image>\n<image>"): each image its own visual run
    visual = [t for k in range(images) for t in ([torch.full((576,), image_token)] +
                                                 ([torch.randint(100, 30000, (1,))] if k < images - 1 else []))]
    ids = torch.cat([torch.randint(100, 30000, (half,)), *visual, torch.randint(100, 30000, (half,))]).unsqueeze(0)
    pixels = torch.randn(images, 3, 336, 336, dtype=dtype)
    return model, {"input_ids": ids.to(device), "pixel_values": pixels.to(device)}


def token_methods() -> list[str]:
    """Every registered token method (plugins too), in the registry's order."""
    from tamp.methods.base import TokenMethod
    from tamp.methods.registry import all_methods

    return [name for name, m in all_methods().items() if isinstance(m, TokenMethod)]


def cases(visual: int, methods: list[str] | None = None) -> list[tuple[str, str | None, dict[str, Any]]]:
    """(phase name, method, transform overrides): dense first, then each method at each budget or at its own
    settings."""
    from tamp.methods.registry import get

    out: list[tuple[str, str | None, dict[str, Any]]] = [(f"prefill, dense, {visual} visual", None, {})]
    for method in methods if methods is not None else token_methods():
        if getattr(get(method), "budget", None) is not None:
            out += [(f"prefill, {method} @ {b} of {visual} visual", method, {"token_budget": b}) for b in BUDGETS]
        elif method in OWN_SETTINGS:
            label, params = OWN_SETTINGS[method]
            out.append((f"prefill, {label} of {visual} visual", method, params))
        else:
            out.append((f"prefill, {method} (own defaults) of {visual} visual", method, {}))
    return out


def top_ops(model: torch.nn.Module, inputs: dict[str, torch.Tensor], n: int = TOP_OPS) -> list[dict[str, Any]]:
    """One profiled prefill: the n operators with the most self CPU time (name, calls, ms, share of the total)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(**inputs, logits_to_keep=1)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"op": e.key, "calls": int(e.count), "self_ms": e.self_cpu_time_total / 1e3,
             "share": e.self_cpu_time_total / total} for e in events[:n]]


@dataclass
class Case:
    """One timed case: its phase, method and transform, and what its warm-up prefill counted."""

    phase: Phase
    method: str | None
    params: dict[str, Any]
    built: TokenTransform | None
    cpu_s: list[float]


def prefill(model: torch.nn.Module, inputs: dict[str, torch.Tensor], case: Case, device: torch.device) -> None:
    """One timed prefill of `case`, its transform installed for it alone: wall time into the phase, the process's
    CPU time (every thread's) into case.cpu_s."""
    dropper = case.built.install(model) if case.built is not None else None
    try:
        with torch.inference_mode(), measured(case.phase, device):
            start = time.process_time()
            model(**inputs, logits_to_keep=1)
            case.cpu_s.append(time.process_time() - start)
    finally:
        if dropper is not None:
            dropper.remove()


def run(size: str, device: torch.device, repeats: int = 11, shape: TokenShape | None = None,
        methods: list[str] | None = None, profile_misses: bool = True) -> list[Phase]:
    """Every case warmed up once (its tokens per layer and FLOPs counted), then `repeats` rounds, each timing every
    case once in turn, so a spell of load from other jobs falls on every case alike rather than on a few; each
    case's times are its median over the rounds. On the CPU the judged ratio (`ratio`) is the process CPU
    time's: the time the prefill computed, which other jobs on a shared machine do not stretch as they stretch
    the wall clock; the wall clock's is beside it (`wall_ratio`). On a GPU it is the synchronised wall clock's."""
    shape = shape or SHAPES[size]
    model, inputs = build(shape, device)
    adapter = get_adapter(model)
    flops_shape = ModelShape.of(model, adapter)
    vision = VisionMeter.install(model, adapter)
    all_cases: list[Case] = []
    refused: list[Phase] = []
    layers = len(adapter.language_stack(model).layers)
    for name, method, params in cases(shape.visual, methods):
        built = TokenTransform.build(method, dict(params)) if method is not None else None
        problem = built.model_problem(adapter.family, layers, model.config) if built is not None else None
        if problem is not None:  # a method for other models (HoliTom: video only): named, not timed
            refused.append(Phase("tokens", name, status="skipped", reason=problem, details={"method": method}))
            continue
        case = Case(Phase("tokens", name), method, params, built, [])
        dropper = built.install(model) if built is not None else None
        try:
            with torch.inference_mode():
                vision.take()
                model(**inputs, logits_to_keep=1)  # warm-up (logits of the last position, as generation asks)
            side = sum(vision.take().dense.values())  # the vision encoder and projector, one prefill
            if dropper is not None:
                stats = dropper.history[-1]
                tokens, visual, scoring, skipped = (stats.tokens_per_layer, stats.visual_kept_per_layer,
                                                    stats.scoring_flops, stats.skipped_flops)
            else:
                tokens = [int(inputs["input_ids"].shape[1])] * len(flops_shape.layers)
                visual, scoring, skipped = [shape.visual] * len(tokens), 0.0, 0.0
        finally:
            if dropper is not None:
                dropper.remove()
        flops = flops_shape.prefill(tokens, 1)["dense"] + scoring - skipped + side
        case.phase.details.update({"method": method or "dense", "params": built.params if built else {},
                                   "budget": params.get("token_budget"), "tokens_per_layer": tokens,
                                   "visual_per_layer": visual, "prefill_tflops": flops / 1e12,
                                   "scoring_tflops": scoring / 1e12, "skipped_tflops": skipped / 1e12,
                                   "vision_tflops": side / 1e12, "shape": shape.__dict__})
        all_cases.append(case)
    for _ in range(repeats):
        for case in all_cases:
            prefill(model, inputs, case, device)
    vision.remove()
    unit, unit_cpu = all_cases[0].phase, statistics.median(all_cases[0].cpu_s)
    unit_flops = unit.details["prefill_tflops"]
    for case in all_cases:
        phase, details = case.phase, case.phase.details
        flop_ratio = details["prefill_tflops"] / unit_flops
        if not case.cpu_s:  # every prefill failed: the phase says why (bench.common.measured)
            continue
        cpu_s = statistics.median(case.cpu_s)
        wall = phase.wall_s / unit.wall_s if phase.wall_s and unit.wall_s else None
        if device.type == "cpu":  # a GPU's time is the synchronised wall clock's
            phase.ratio, phase.ratio_to = cpu_s / unit_cpu, "dense prefill (CPU time)"
        else:
            phase.ratio, phase.ratio_to = wall, "dense prefill"
        details.update({"flop_ratio": flop_ratio, "cpu_times_s": case.cpu_s, "cpu_s": cpu_s,
                        "cpu_over_flop_ratio": cpu_s / unit_cpu / flop_ratio, "wall_ratio": wall,
                        "wall_over_flop_ratio": wall / flop_ratio if wall else None})
        if case.method is not None and phase.ratio is not None:
            phase.target, phase.met = SLACK * flop_ratio, phase.ratio <= SLACK * flop_ratio
        if profile_misses and phase.met is False:
            dropper = case.built.install(model) if case.built is not None else None
            try:
                phase.details["top_ops"] = top_ops(model, inputs)
            finally:
                if dropper is not None:
                    dropper.remove()
    return [case.phase for case in all_cases] + refused
