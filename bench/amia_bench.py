"""Section 1: AMIA token selection, fast path vs the reference loop vs the pairwise-similarity compute floor.

Inputs mimic one module's output tokens in a LLaVA sample: a few clusters plus noise for the image tokens
(neighbouring patches look alike), other clusters for the text tokens, and an attention score that is a softmax
of random logits.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.common import Phase, TimeLimit, interleaved, measured, time_limit

SECTION = "amia"
FLOOR_TARGET = 2.0  # fast AMIA should cost at most twice the similarity matmul it cannot avoid


@dataclass
class AmiaCase:
    """One benchmark input shape: image tokens, text tokens, feature width."""

    n_image: int
    n_text: int
    dim: int
    mmd_factor: float = 0.1  # released constant; smaller = more tokens selected (a longer greedy loop)

    @property
    def tokens(self) -> int:
        return self.n_image + self.n_text

    @property
    def label(self) -> str:
        stress = "" if self.mmd_factor == 0.1 else f", mmd_factor={self.mmd_factor:g}"
        return f"T={self.tokens} ({self.n_image} img + {self.n_text} txt), D={self.dim}{stress}"


def make_inputs(case: AmiaCase, seed: int = 0, device: torch.device | str = "cpu",
                clusters: int = 12, noise: float = 0.35) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(out (T, D), scores (T,), masks) with a LLaVA-like layout: a short text prefix, the image, the question."""
    g = torch.Generator().manual_seed(seed)
    t, d = case.tokens, case.dim
    prefix = min(case.n_text, max(1, case.n_text // 8))
    is_image = torch.zeros(t, dtype=torch.bool)
    is_image[prefix:prefix + case.n_image] = True
    img_centres = torch.randn(clusters, d, generator=g)
    txt_centres = torch.randn(max(2, clusters // 3), d, generator=g)
    # image clusters come in spatial runs (patches of one object), text picks clusters freely
    run = max(1, case.n_image // (4 * clusters))
    img_assign = torch.randint(0, clusters, ((case.n_image + run - 1) // run,), generator=g).repeat_interleave(run)
    txt_assign = torch.randint(0, txt_centres.shape[0], (case.n_text,), generator=g)
    out = torch.empty(t, d)
    out[is_image] = img_centres[img_assign[: case.n_image]]
    out[~is_image] = txt_centres[txt_assign]
    out += noise * torch.randn(t, d, generator=g)
    out *= torch.rand(t, 1, generator=g) * 2 + 0.5  # token norms vary; AMIA normalises them away
    scores = torch.softmax(2.0 * torch.randn(t, generator=g), dim=0)
    masks = {"image": is_image.to(device), "text": (~is_image).to(device)}
    return out.to(device), scores.to(device), masks


def similarity_floor(out: torch.Tensor) -> torch.Tensor:
    """The compute floor: fp32 row normalisation and the T x T cosine-similarity matmul."""
    x = F.normalize(out.float(), dim=-1)
    return x @ x.T


def bench_case(case: AmiaCase, repeats: int, ref_repeats: int, ref_limit_s: float | None,
               device: torch.device, seed: int = 0) -> list[Phase]:
    """Time floor, fast and reference on one input; returns the three phases (plus preparation when available)."""
    from tamp.algorithms.amia import amia_select, amia_select_reference

    out, scores, masks = make_inputs(case, seed, device)
    common = {"tokens": case.tokens, "n_image": case.n_image, "n_text": case.n_text, "dim": case.dim,
              "mmd_factor": case.mmd_factor}
    kw = {"mmd_factor": case.mmd_factor}

    floor = Phase(SECTION, f"floor x@x.T  {case.label}", details=dict(common))
    fast = Phase(SECTION, f"amia_select   {case.label}", details=dict(common))
    fns = {"floor": (floor, lambda: similarity_floor(out)), "fast": (fast, lambda: amia_select(out, scores, masks, **kw))}
    prepare = _prepare_fn(out, scores, masks) if case.mmd_factor == 0.1 else None
    if prepare is not None:
        prep = Phase(SECTION, f"  prepare     {case.label}",
                     details={"what": "amia._prepare: normalise, gram, density, kNN graph, kernel (no greedy loop)"})
        fns["prepare"] = (prep, prepare)
    results = _time_together(fns, repeats, device)
    phases = [floor, fast]
    chosen = results.get("fast")
    if chosen is not None:
        fast.details["selected_tokens"] = int(chosen.sum())
        fast.set_ratio(floor.wall_s, "floor", FLOOR_TARGET)
    if "prepare" in fns:
        prep = fns["prepare"][0]
        prep.set_ratio(floor.wall_s, "floor")
        if fast.wall_s and prep.wall_s is not None:
            fast.details["prepare_s"] = prep.wall_s
            fast.details["greedy_s"] = max(fast.wall_s - prep.wall_s, 0.0)
        phases.append(prep)

    ref = Phase(SECTION, f"reference     {case.label}", details=dict(common))
    ref_sel = None
    with measured(ref, device, record_time=False):
        try:
            for _ in range(max(1, ref_repeats)):
                start = time.perf_counter()
                with time_limit(ref_limit_s):
                    ref_sel = amia_select_reference(out, scores, masks, **kw)
                ref.times_s.append(time.perf_counter() - start)
        except TimeLimit as exc:
            ref.status, ref.reason = "partial", f"{exc}; reference stopped before finishing"
            ref.details["time_limit_s"] = ref_limit_s
    if ref.times_s:
        ref.wall_s = statistics.median(ref.times_s)
    if ref.status == "partial":
        ref.details["lower_bound_s"] = ref_limit_s
        if fast.wall_s:
            ref.details["speedup_lower_bound"] = ref_limit_s / fast.wall_s if ref_limit_s else None
    phases.append(ref)
    if ref_sel is not None and chosen is not None:
        identical = bool(torch.equal(ref_sel.cpu(), chosen.cpu()))
        for p in (fast, ref):
            p.details["identical"] = identical
            p.details["reference_selected_tokens"] = int(ref_sel.sum())
        if ref.wall_s and fast.wall_s:
            fast.details["speedup_vs_reference"] = ref.wall_s / fast.wall_s
            ref.set_ratio(fast.wall_s, "amia_select")
    return phases


def _prepare_fn(out: torch.Tensor, scores: torch.Tensor, masks: dict[str, torch.Tensor]) -> Callable[[], object] | None:
    """AMIA's shared preparation step alone (private API; None, and no row, if it changed)."""
    try:
        from tamp.algorithms.amia import _prepare
    except ImportError:
        return None
    return lambda: _prepare(out, scores, masks, 3, 1.0, 0.2, 0.1, 1.0)


def _time_together(fns: dict[str, tuple[Phase, Callable[[], object]]], repeats: int,
                   device: torch.device) -> dict[str, object]:
    """One call of each under `measured` (its peak memory and the warm-up; an error marks that phase only), then the
    working ones timed round-robin (`interleaved`), so the ratios between them do not depend on when each one ran."""
    results: dict[str, object] = {}
    for name, (phase, fn) in fns.items():
        with measured(phase, device, record_time=False):
            results[name] = fn()
    ok = {name: fn for name, (phase, fn) in fns.items() if phase.status == "ok"}
    if ok:
        times = interleaved(ok, repeats, device)  # the measured calls above were the warm-up
        for name, ts in times.items():
            phase = fns[name][0]
            phase.times_s, phase.wall_s = ts, statistics.median(ts)
    return results


# ---------------------------------------------------------------------------------------------------------------------
# The AMIA stage of one sample: every linear of a llama3-8b block, as the engine runs them
# ---------------------------------------------------------------------------------------------------------------------

# output width of each linear in a llama3-llava-next-8b decoder block (hidden 4096, 8 KV heads x 128, MLP 14336)
LLAMA3_8B_WIDTHS = (("q_proj", 4096), ("k_proj", 1024), ("v_proj", 1024), ("o_proj", 4096),
                    ("gate_proj", 14336), ("up_proj", 14336), ("down_proj", 4096))


@dataclass
class StageCase:
    """One sample's AMIA stage: a selection per linear module of a block, on that module's own output tokens."""

    n_image: int
    n_text: int
    widths: tuple[tuple[str, int], ...] = LLAMA3_8B_WIDTHS
    mmd_factor: float = 0.1

    @property
    def tokens(self) -> int:
        return self.n_image + self.n_text

    @property
    def label(self) -> str:
        return f"T={self.tokens} ({self.n_image} img + {self.n_text} txt), {len(self.widths)} modules"


def make_stage_inputs(case: StageCase, seed: int = 0, device: torch.device | str = "cpu"
                      ) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor]]:
    """Per-module outputs (each its own clusters and noise) sharing one sample's layout and attention score."""
    outs: dict[str, torch.Tensor] = {}
    scores = masks = None
    for i, (name, width) in enumerate(case.widths):
        out, s, m = make_inputs(AmiaCase(case.n_image, case.n_text, width), seed * 1000 + i, device)
        outs[name] = out
        if scores is None:
            scores, masks = s, m
    assert scores is not None and masks is not None
    return outs, scores, masks


def bench_stage(case: StageCase, repeats: int, ref_limit_s: float | None, device: torch.device,
                seed: int = 0) -> list[Phase]:
    """The engine's AMIA stage for one sample (`tamp.methods.amia.select_per_module`: equal widths batched) against the
    sum of the modules' similarity floors and against the reference run module by module."""
    from tamp.algorithms.amia import amia_select_reference
    from tamp.methods.amia import select_per_module

    outs, scores, masks = make_stage_inputs(case, seed, device)
    common = {"tokens": case.tokens, "n_image": case.n_image, "n_text": case.n_text,
              "widths": dict(case.widths), "mmd_factor": case.mmd_factor}
    kw = {"mmd_factor": case.mmd_factor}

    floor = Phase(SECTION, f"stage floor   {case.label}", details=dict(common))
    fast = Phase(SECTION, f"stage amia    {case.label}", details=dict(common))
    results = _time_together({"floor": (floor, lambda: [similarity_floor(o) for o in outs.values()]),
                              "fast": (fast, lambda: select_per_module(outs, scores, masks, **kw))}, repeats, device)
    chosen: dict[str, torch.Tensor] = results.get("fast") or {}  # type: ignore[assignment]
    if chosen:
        fast.details["selected_per_module"] = {n: int(c.sum()) for n, c in chosen.items()}
        fast.details["selected_tokens"] = sum(fast.details["selected_per_module"].values())
        fast.details["tokens"] = case.tokens * len(outs)
        fast.set_ratio(floor.wall_s, "floor", FLOOR_TARGET)

    ref = Phase(SECTION, f"stage ref     {case.label}", details=dict(common))
    ref_sel: dict[str, torch.Tensor] = {}
    with measured(ref, device, record_time=False):
        start = time.perf_counter()
        try:
            with time_limit(ref_limit_s):
                for name, out in outs.items():
                    ref_sel[name] = amia_select_reference(out, scores, masks, **kw)
            ref.times_s.append(time.perf_counter() - start)
            ref.wall_s = ref.times_s[0]
        except TimeLimit as exc:
            ref.status, ref.reason = "partial", f"{exc}; reference stopped after {len(ref_sel)} modules"
            ref.details["time_limit_s"] = ref_limit_s
    if chosen and ref_sel:
        identical = all(torch.equal(ref_sel[n].cpu(), chosen[n].cpu()) for n in ref_sel)
        for p in (fast, ref):
            p.details["identical"] = identical
            p.details["modules_compared"] = len(ref_sel)
        if ref.status == "ok" and ref.wall_s and fast.wall_s:
            fast.details["speedup_vs_reference"] = ref.wall_s / fast.wall_s
            ref.set_ratio(fast.wall_s, "stage amia")
    return [floor, fast, ref]


def run(size: str, device: torch.device, repeats: int = 5, ref_limit_s: float | None = 120.0,
        cases: list[AmiaCase | StageCase] | None = None) -> list[Phase]:
    """The AMIA section for `size` (cpu: D=128, 8b: D=4096); the last case stresses the greedy loop."""
    dim = 4096 if size == "8b" else 128
    cases = cases or [AmiaCase(576, 40, dim), AmiaCase(2880, 100, dim), AmiaCase(2880, 100, dim, mmd_factor=0.01)]
    phases: list[Phase] = []
    for i, case in enumerate(cases):
        big = case.tokens > 1000
        # millisecond-sized cases get more rounds: they cost nothing and their medians are noisier
        n = max(1, repeats - 2) if big else 3 * repeats
        if isinstance(case, StageCase):
            phases += bench_stage(case, repeats=n, ref_limit_s=ref_limit_s, device=device, seed=i)
            continue
        phases += bench_case(case, repeats=n, ref_repeats=1 if big else 3, ref_limit_s=ref_limit_s, device=device,
                             seed=i)
    return phases
