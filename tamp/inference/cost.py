"""The cost axis of an evaluation: what each prefill cost (FLOPs, wall time, tokens per layer) and how fast
decoding ran, measured on the model as it is evaluated (with any token transform applied).

One meter per loaded model; `take()` returns the summary of everything since the last `take()` (one task) and
starts afresh, peak memory included (the run's own, with how it was measured: tamp/inference/peak_memory.py).
Timings synchronise CUDA, so GPU work is charged to the step that launched it. Data-parallel evaluation has one
meter per process: each `export()`s what it measured, and `summarize` merges them.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn

from tamp.inference.flops import ModelShape
from tamp.inference.peak_memory import RunPeak
from tamp.inference.sequence_edit import VISUAL, SequenceEditor
from tamp.inference.vision_flops import VisionMeter
from tamp.models.adapters import ModelAdapter, get_adapter


class CostMeter:
    def __init__(self, model: nn.Module, dropper: SequenceEditor | None = None,
                 adapter: ModelAdapter | None = None) -> None:
        self.model, self.dropper = model, dropper
        self.adapter = adapter or get_adapter(model)
        self.shape = ModelShape.of(model, self.adapter)
        self.layers = len(self.shape.layers)
        self.visual_ids = [i for m in VISUAL for i in self.adapter.media_token_ids.get(m, [])]
        self.device = next(model.parameters()).device
        self.vision = VisionMeter.install(model, self.adapter)
        runner = self.adapter.runner(model)
        self._handles = [runner.register_forward_pre_hook(self._before, with_kwargs=True),
                         runner.register_forward_hook(self._after, with_kwargs=True)]
        self._reset()

    def _reset(self) -> None:
        self.prefills: list[dict[str, Any]] = []
        self.decode_steps, self.decode_s = 0, 0.0
        self._start: float | None = None
        self._kind = ""
        self._peak = RunPeak.start(self.device)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        if self.vision is not None:
            self.vision.remove()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _before(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            return
        self._kind = "prefill" if ids.shape[1] > 1 else "decode"
        self._ids = ids
        self._sync()
        self._start = time.perf_counter()

    def _after(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        if self._start is None:
            return
        self._sync()
        elapsed = time.perf_counter() - self._start
        self._start = None
        if self._peak.samples:
            self._peak.sample()
        if self._kind == "decode":
            if self.vision is not None:
                self.vision.take()  # nothing of the vision side belongs to a decode step
            self.decode_steps += int(self._ids.shape[0])
            self.decode_s += elapsed
            return
        ids = self._ids
        visual = int(torch.isin(ids, torch.tensor(self.visual_ids, device=ids.device)).sum()) if self.visual_ids else 0
        stats = self.dropper.history[-1] if self.dropper is not None and self.dropper.history else None
        if stats is not None and len(stats.tokens_per_layer) == self.layers and stats.visual_in == visual:
            tokens, visual_layers, scoring = stats.tokens_per_layer, stats.visual_kept_per_layer, stats.scoring_flops
            skipped, skipped_nonzero = stats.skipped_flops, stats.skipped_nonzero_flops
        else:
            tokens, visual_layers, scoring = [int(ids.shape[1])] * self.layers, [visual // int(ids.shape[0])] * self.layers, 0.0
            skipped = skipped_nonzero = 0.0
        logits = getattr(output, "logits", None)
        positions = int(logits.shape[1]) if isinstance(logits, torch.Tensor) else int(ids.shape[1])
        flops = self.shape.prefill(tokens, positions)  # per sample: token counts are per sample
        batch = int(ids.shape[0])
        # the vision side since the last call: generate() runs the vision tower before the prefill's forward
        vision = self.vision.take() if self.vision is not None else None
        encoder, projector = (vision.dense["encoder"] / batch, vision.dense["projector"] / batch) if vision else (0., 0.)
        vision_nonzero = sum(vision.nonzero.values()) / batch if vision else 0.0
        self.prefills.append({"seconds": elapsed / batch, "batch": batch, "batch_seconds": elapsed,
                              "dense": flops["dense"] + scoring - skipped + encoder + projector,
                              "nonzero": flops["nonzero"] + scoring - skipped_nonzero + vision_nonzero,
                              "encoder": encoder, "projector": projector, "tokens": int(ids.shape[1]),
                              "visual_in": visual / batch, "visual_kept": visual_layers[-1], "tokens_per_layer": tokens,
                              "visual_per_layer": visual_layers})

    def export(self) -> dict[str, Any]:
        """What this meter measured since the last take, as JSON (one process's share of a data-parallel run)."""
        peak, how = self._peak.read()
        return {"prefills": list(self.prefills), "decode_steps": self.decode_steps, "decode_s": self.decode_s,
                "peak_memory_mb": peak, "peak_memory_how": how, "device": str(self.device), "layers": self.layers}

    def take(self) -> dict[str, Any] | None:
        """Summary since the last take (None when nothing ran), then reset."""
        out = summarize([self.export()])
        self._reset()
        return out


def summarize(parts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One cost summary from the exports of one or more meters (the processes of a data-parallel run): means and
    the median over every prefill, decode speed per process, the highest peak memory (and how each process measured
    it, joined when they differ). None when nothing ran."""
    p = [x for part in parts for x in part["prefills"]]
    if not p:
        return None
    layers = int(parts[0]["layers"])
    decode_s = sum(part["decode_s"] for part in parts)
    return {
        "prefills": len(p),
        "prefill_tflops": statistics.fmean(x["dense"] for x in p) / 1e12,
        "prefill_tflops_nonzero": statistics.fmean(x["nonzero"] for x in p) / 1e12,
        # the vision encoder's and the projector's shares of prefill_tflops (absent from a meter's exports before it was counted)
        "prefill_tflops_encoder": statistics.fmean(x.get("encoder", 0.0) for x in p) / 1e12,
        "prefill_tflops_projector": statistics.fmean(x.get("projector", 0.0) for x in p) / 1e12,
        "prefill_latency_s": statistics.median(x["seconds"] for x in p),
        "prompt_tokens": statistics.fmean(x["tokens"] for x in p),
        "visual_tokens_in": statistics.fmean(x["visual_in"] for x in p),
        "visual_tokens_kept": statistics.fmean(x["visual_kept"] for x in p),
        "tokens_per_layer": [statistics.fmean(x["tokens_per_layer"][i] for x in p) for i in range(layers)],
        "visual_tokens_per_layer": [statistics.fmean(x["visual_per_layer"][i] for x in p) for i in range(layers)],
        "decode_tokens_per_s": sum(part["decode_steps"] for part in parts) / decode_s if decode_s > 0 else None,
        "peak_memory_mb": max(part["peak_memory_mb"] for part in parts),
        "peak_memory_how": ",".join(sorted({part["peak_memory_how"] for part in parts
                                            if part.get("peak_memory_how")})) or None,
        "device": parts[0]["device"],
        "processes": len(parts),
        "flops_counted": "vision encoder + projector (tamp/inference/vision_flops.py) + language model: decoder "
                         "linears + attention matmuls + LM head + token scoring (tamp/inference/flops.py)",
    }
