"""HoliTom (Shao et al., NeurIPS 2025): holistic token merging for video LLMs, outside the LLM (temporal segments
and their static tokens, then each frame's dominant tokens) and once inside it (the least attended visual tokens
averaged into the most similar kept ones).

Released code (cokeshao/HoliTom, `holitom/llava_arch.py`, `holitom/modeling_qwen2.py`, `scripts/*.sh`), on
LLaVA-OneVision / LLaVA-Video. Each video's frames are projected and pooled (LLaVA-OneVision: 27 x 27 -> 14 x 14
bilinear); the attention each patch receives at the vision feature layer (SigLIP's last, eager, mean over heads
then queries) is pooled the same way. The frames are cut into segments by a dynamic programme maximising the
tokens that stay above tau (adjacent-frame cosine similarity) across a whole segment; the retain ratio is raised
by the share those save; per segment the static tokens (averaged over its frames) become round(n x ratio) DPC-KNN
clusters (peak x beta + members' mean x (1 - beta), beta 0.6), and each frame keeps ceil(n x ratio) of its other
tokens by that attention (D = 0: none of them clustered). The video's tokens become, segment by segment, the
clusters then each frame's kept tokens, with LLaVA-OneVision's one newline at the end, and take the video's
place in the prompt (re-packed positions). Inside the LLM (HOLITOM_k = 18 of Qwen2-7B's 28 layers, HOLITOM_r =
0.5), before layer K the last token's attention in layer K - 1 (mean over heads) keeps round(n x (1 - r)) of the
visual tokens; each other one, in order, is averaged into its most cosine-similar kept token (h <- (h + x) / 2),
and the kept ones keep their positions. Scripts: RETAIN_RATIO 0.10 with T = 0.65; 0.15, 0.20, 0.25 with T = 0.80.

Here the same steps run on the states entering decoder layer 0 (LLaVA-OneVision's projected, pooled frames) with
the vision attention formed from the feature layer's own query and key (tamp.inference.vision_attention_received,
any kernel); the tensor math is tamp.algorithms.holitom. Images are left to the stock path outside the LLM, as
the release leaves them (its outer step acts on video only), and the inner merge takes every visual token (the
release's: the first image's or video's run). Runs on LLaVA-OneVision and, beyond the release, Qwen2-VL,
Qwen2.5-VL and Qwen3-VL: the tower's last block attends frame by frame (a frame = a temporal patch of 2 input
frames); a token's attention is the mean over the 2 x 2 patches its merger joins (Qwen2.5-VL's put back from the
window order); every merged token keeps the 3-D mrope position of the token it stands at (a static cluster: its peak in
the segment's first frame). Qwen3-VL writes a timestamp before each frame: a video is as many runs as its grid
has frames, and each frame's kept tokens take its run. Qwen2.5-Omni (frames interleaved with audio) and the
image-only families are refused with one line.
"""

from __future__ import annotations

from typing import Any

import torch

from tamp.algorithms.holitom import attended_merge, merge_video
from tamp.algorithms.token_keep import flag_runs
from tamp.engine.attention import LAST_ROW
from tamp.errors import TampError
from tamp.inference.sequence_edit import Drop, DropInput, Kept, TokenPlan
from tamp.inference.vision_attention_received import ReceivedCall, ReceivedCapture, pooled
from tamp.methods.base import Param, TokenMethod
from tamp.models import internals

RELEASED_K = (18, 28)  # HOLITOM_k = 18 on Qwen2-7B's 28 layers (every script)
INNER = ("merge", "off")
FAMILIES = ("llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl")
RUN_PER_FRAME = ("qwen3_vl",)  # a timestamp before each frame: a video is as many runs as frames


def family_problem(config: Any) -> str | None:
    """Why HoliTom cannot run on a model with this config, or None."""
    kind = getattr(config, "model_type", "?")
    if kind in FAMILIES:
        return None
    return (f"holitom merges video frames: it runs on LLaVA-OneVision (the release's model) and Qwen2-VL / 2.5-VL / "
            f"3-VL; this model ({kind}) is not supported (images only, no per-frame grid, or Qwen2.5-Omni's frames "
            f"interleaved with audio); use aim, divprune, random or pool here")


def inner_layer(params: dict[str, Any], num_layers: int) -> int:
    """The decoder layer the inner merge runs before: holitom_k, or (-1) the release's 18 of 28 scaled to the
    depth, at least 1 (its ranking reads the layer before)."""
    k = int(params["holitom_k"])
    if k < 0:
        k = round(num_layers * RELEASED_K[0] / RELEASED_K[1])
    return max(1, min(k, num_layers - 1))


def depth_problem(params: dict[str, Any], num_layers: int) -> str | None:
    k = int(params["holitom_k"])
    if str(params["holitom_inner"]) == "merge" and k >= num_layers:
        return (f"holitom_k {k} is beyond this model's {num_layers} decoder layers: give at most {num_layers - 1}, "
                f"or -1 for the release's 18 of 28 scaled to the depth")
    return None


class _Frames:
    """Walks a prefill's video frames over its samples: the attention each frame's patches received."""

    def __init__(self, capture: ReceivedCapture) -> None:
        self.capture = capture
        self._for: Any = None
        self.rows: list[torch.Tensor] = []
        self.cursor = 0
        self.videos: list[int] = []  # frames of each video of the call, in order (from its grid)

    def start(self) -> float:
        """On a new prefill: take its vision calls; returns the FLOPs they cost (charged to its first sample)."""
        editor = self.capture.editor
        assert editor is not None
        if self._for is editor.history[-1]:
            return 0.0
        self._for, self.cursor = editor.history[-1], 0
        calls = self.capture.take()
        # the last call is the videos' (images are encoded first); one row per frame
        self.rows = frame_rows(editor.model.config, calls[-1]) if calls else []
        grid = calls[-1].grid if calls else None
        self.videos = [] if grid is None else [int(t) for t in grid[:, 0].tolist()]
        return sum(c.flops for c in calls)

    def frames_of_next_video(self) -> int:
        if not self.videos:
            raise RuntimeError("holitom: more videos in the prompt than the vision encoder saw")
        return self.videos.pop(0)

    def next(self, count: int) -> list[torch.Tensor]:
        if self.cursor + count > len(self.rows):
            raise RuntimeError("holitom: the vision encoder's attention of this video's frames was not captured")
        rows = self.rows[self.cursor:self.cursor + count]
        self.cursor += count
        return rows


def frame_rows(config: Any, call: ReceivedCall) -> list[torch.Tensor]:
    """Per frame of a vision call, each LLM token's share of the attention its frame's patches received.
    LLaVA-OneVision: the patch map pooled as the frame is (bilinear, ceil(side / 2)); Qwen2-VL: the mean over the
    spatial_merge_size^2 consecutive patches its merger joins into one token; Qwen2.5-VL: the same, after putting
    the merge units back from the tower's window order."""
    if config.model_type == "llava_onevision":
        side = int(config.vision_config.image_size) // int(config.vision_config.patch_size)
        stacked = torch.cat(call.rows).float()
        if config.vision_feature_select_strategy == "default":
            stacked = stacked[:, 1:]
        return list(pooled(stacked, side))
    merge = int(config.vision_config.spatial_merge_size) ** 2
    units = torch.cat([row.flatten() for block in call.rows for row in block]).float().view(-1, merge).mean(dim=-1)
    if call.grid is None:
        raise RuntimeError("holitom: the video's grid_thw was not seen by the vision tower")
    if config.model_type == "qwen2_5_vl":
        window = internals.vision_window_index(call.grid.cpu(), config.vision_config).to(units.device)
        units = torch.empty_like(units).index_copy_(0, window, units)
    sizes = [int(h * w) // merge for t, h, w in call.grid.tolist() for _ in range(int(t))]
    return list(torch.split(units, sizes))


def video_frames(config: Any, seen: DropInput, frames: _Frames) -> list[list[tuple[int, int]]]:
    """Each video of the sample as its frames' (start, end) in the sequence: a run of video tokens split into its
    frame groups (LLaVA-OneVision's closing newline left out), or, Qwen3-VL, as many runs as the video has frames
    (a timestamp before each)."""
    video = seen.video if seen.video is not None else torch.zeros_like(seen.visual)
    runs = flag_runs((seen.visual & video).tolist())
    if config.model_type in RUN_PER_FRAME:
        out = []
        while runs:
            count = frames.frames_of_next_video()
            out.append(runs[:count])
            runs = runs[count:]
        return out
    newline = int(config.model_type == "llava_onevision")
    out = []
    for start, end in runs:
        count = int(torch.unique(seen.groups[start:end - newline]).numel())
        per = (end - newline - start) // count
        out.append([(start + f * per, start + (f + 1) * per) for f in range(count)])
    return out


def outer_drop(params: dict[str, Any], capture: ReceivedCapture) -> Drop:
    """Before layer 0: each video's tokens replaced by HoliTom's, in the release's order, re-packed (Qwen2-VL:
    each token keeps its own 3-D position)."""
    frames = _Frames(capture)
    settings = dict(keep=float(params["holitom_keep"]), tau=float(params["holitom_tau"]),
                    beta=float(params["holitom_beta"]), contextual=float(params["holitom_d"]),
                    k=int(params["holitom_knn"]), max_window=int(params["holitom_max_window"]))

    def choose(seen: DropInput) -> Kept:
        flops = frames.start()
        editor = capture.editor
        assert editor is not None
        order = torch.arange(seen.hidden.shape[0], device=seen.hidden.device)
        hidden = seen.hidden.clone()
        pieces, last = [], 0
        for spans in video_frames(editor.model.config, seen, frames):
            tokens = torch.cat([order[a:b] for a, b in spans])
            count, per = len(spans), spans[0][1] - spans[0][0]
            attention = torch.stack(frames.next(count))
            if any(b - a != per for a, b in spans) or attention.shape[1] != per:
                raise RuntimeError(f"holitom: a video of {count} frames has {tokens.numel()} tokens, its attention "
                                   f"map {attention.shape[1]} per frame")
            merged = merge_video(seen.hidden[tokens].view(count, per, -1), attention.to(seen.hidden.device),
                                 **settings)
            kept = tokens[merged.sources]
            hidden[kept] = merged.states.to(hidden.dtype)
            frame_of = merged.sources // per  # ascending: the release's order is frame by frame
            for f, (a, b) in enumerate(spans):  # each frame's tokens take its place (text between frames stays)
                pieces += [order[last:a], kept[frame_of == f]]
                last = b
            flops += merged.flops
        positions = torch.cat([*pieces, order[last:]])
        return Kept(positions, hidden[positions], flops, repack=bool(pieces))

    return Drop(choose)


def inner_drop(ratio: float) -> Drop:
    """Before layer K: round(n x (1 - r)) visual tokens stay, the others averaged into them."""

    def choose(seen: DropInput) -> Kept:
        assert seen.scores is not None
        visual = torch.nonzero(seen.visual).flatten()
        # at least one stays (the release's merge fails on none: its similarity maximum over no kept token)
        keep = max(round(visual.numel() * (1 - ratio)), min(1, visual.numel()))
        kept, states, flops = attended_merge(seen.hidden[visual], seen.scores[visual], keep)
        hidden = seen.hidden.clone()
        hidden[visual[kept]] = states
        positions = torch.sort(torch.cat([torch.nonzero(~seen.visual).flatten(), visual[kept]])).values
        return Kept(positions, hidden[positions], flops)

    return Drop(choose, LAST_ROW)


def plan(params: dict[str, Any], num_layers: int) -> TokenPlan:
    problem = depth_problem(params, num_layers)
    if problem is not None:
        raise TampError(problem)
    capture = ReceivedCapture("holitom", family_problem)
    drops = {0: outer_drop(params, capture)}
    if str(params["holitom_inner"]) == "merge":
        drops[inner_layer(params, num_layers)] = inner_drop(float(params["holitom_r"]))
    return TokenPlan(dict(sorted(drops.items())), (capture,))


def budget(share: float) -> dict[str, Any]:
    """The common share is the release's RETAIN_RATIO, with the scripts' tau: 0.65 at 0.10, 0.80 at 0.15-0.25
    (the nearer of the two settings)."""
    return {"holitom_keep": share, "holitom_tau": 0.65 if share < 0.125 else 0.80}


def _within(name: str, low: float, high: float, low_open: bool = False):
    def check(v: float) -> str | None:
        ok = (low < v <= high) if low_open else (low <= v <= high)
        return None if ok else f"{name} must be in {'(' if low_open else '['}{low}, {high}], got {v}"
    return check


PARAMS = (
    Param("holitom_keep", float, 0.15, "share of each video's tokens kept outside the LLM (the release's "
          "RETAIN_RATIO; its scripts run 0.10, 0.15, 0.20, 0.25)", check=_within("holitom_keep", 0, 1, True)),
    Param("holitom_tau", float, 0.80, "adjacent-frame cosine similarity above which a token is static (T: 0.65 "
          "with RETAIN_RATIO 0.10, else 0.80; above 1 nothing is static)", check=_within("holitom_tau", -1, 2)),
    Param("holitom_beta", float, 0.6, "a cluster's peak weight against its members' mean (BETA)",
          check=_within("holitom_beta", 0, 1)),
    Param("holitom_d", float, 0.0, "share of a frame's kept tokens that are DPC-KNN clusters of the rest instead "
          "of dominant ones (D)", check=_within("holitom_d", 0, 1)),
    Param("holitom_knn", int, 7, "neighbours of DPC-KNN's density (K)",
          check=lambda v: None if v >= 1 else f"holitom_knn must be at least 1, got {v}"),
    Param("holitom_max_window", int, 1024, "most frames in one segment (MAX_WINDOW_SIZE)",
          check=lambda v: None if v >= 1 else f"holitom_max_window must be at least 1, got {v}"),
    Param("holitom_inner", str, "merge", "merge: also merge inside the LLM (the scripts' HoliTom); off: the outer "
          "step only (the paper's HoliTom w/o M)", choices=INNER),
    Param("holitom_k", int, -1, "decoder layer the inner merge runs before (0-based); -1: the release's 18 of 28 "
          "scaled to the depth", check=lambda v: None if v == -1 or v >= 1 else
          f"holitom_k must be -1 (the release's, scaled) or a layer index of at least 1, got {v}"),
    Param("holitom_r", float, 0.5, "share of the visual tokens merged away inside the LLM (HOLITOM_r)",
          check=_within("holitom_r", 0, 1)),
)

METHOD = TokenMethod(
    config_problem=family_problem,
    name="holitom", label="HoliTom", order=33,
    summary="video: merge static tokens over temporal segments and keep each frame's most attended tokens before "
            "the LLM, then merge the least attended visual tokens into similar ones at one layer (LLaVA-OneVision, "
            "Qwen2-VL / 2.5-VL / 3-VL)",
    params=PARAMS, plan=plan, budget=budget, depth_problem=depth_problem,
    attention=("the attention each patch receives at the vision feature layer (mean over heads and queries), formed "
               "from that layer's own query and key a frame and a few heads at a time (tamp.inference.vision_"
               "attention_received; the release runs eager attention with output_attentions); inside the LLM the "
               "last prompt token's row of layer K - 1 (LAST_ROW, O(T)), under any kernel"),
)
