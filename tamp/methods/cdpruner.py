"""CDPruner (Zhang et al., NeurIPS 2025): before the LLM, each crop keeps the visual tokens a conditional DPP picks:
diverse (the projected features' cosine similarity) and relevant to the instruction.

Released code (Theia-4869/CDPruner, `llava/model/llava_arch.py` `encode_images`, `multimodal_encoder/clip_encoder.py`,
`llava/eval/model_vqa_loader.py`), LLaVA-1.5 and LLaVA-NeXT only: per crop, the similarity of its 576 patch features
after the projector; the relevance of each patch to the question (the eval scripts pass the question text alone:
no system prompt, no image token, the fixed answer-format line cut off), from CLIP's own text tower against the
feature-layer patches through CLIP's post-layernorm and visual projection, min-max normalised over every crop of the
call; then `visual_token_num` picks per crop by tamp.algorithms.conditional_dpp.greedy_map, kept in token order.
LLaVA-NeXT: each crop (base tile and every tile, padding included) picks its own count; the base crop's mask
applies to its tokens, the tiles' masks through the unpadded grid, every newline kept (README: 32 x 5 = 160). The
shortened prompt is re-packed (positions 0..T'-1). No Qwen / OneVision / video path is released.

Here: the models carry no CLIP text tower (transformers' LLaVA checkpoints hold the vision tower only), so the
instruction is embedded by the LLM's own input embeddings (what the decoder's layer 0 receives), and the relevance
compares them with the same projected features as the similarity. The instruction is the prompt's text after its
last visual token (`cdpruner_text=after`: the user's question that follows the image, without the system prompt;
the chat template's closing tokens come with it), or every text token (`all`). LLaVA-NeXT's crops come from the
projector's own output (the CropFeatures install), so the padded patches take part as in the release. Families
without a released path (OneVision, Qwen2-VL / 2.5-VL / 3-VL, InternVL3, Gemma 3, SmolVLM): each image, tile run or
video frame (`DropInput.groups`) is one crop, its features the visual tokens entering the LLM. Token budget:
`cdpruner_keep` = the share of each crop's tokens kept (64 / 128 / 192 of 576 = 0.111 / 0.222 / 0.333). The
budget (`token_budget=SHARE`) also sets `cdpruner_count` = image (as VisPruner's `vispruner_count`): on LLaVA-NeXT
each image keeps round(SHARE x its visual tokens in the prompt), the newlines the release keeps counted in, the rest
picked among the patches the prompt holds (the unpadded tiles), split over the crops in proportion to them, at
least one each: 12 / 8 / 6 of the tiny LLaVA-NeXT's 36 (the release's per-crop count gives 14 / 12 / 8); one crop
of 576 (LLaVA-1.5) and the other families (one crop per image, tile run or frame, no newlines): the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from tamp.algorithms.conditional_dpp import choice_flops, conditional_kernel, greedy_map, normalise, raw_relevance
from tamp.algorithms.diverse_subset import visual_runs
from tamp.algorithms.token_keep import keep_count
from tamp.errors import TampError
from tamp.inference.sequence_edit import Drop, DropInput, Kept, TokenPlan
from tamp.inference.vision_attention_capture import crop_sources, projector
from tamp.methods.base import Param, TokenMethod
from tamp.methods.vispruner import crop_counts

if TYPE_CHECKING:
    from tamp.inference.sequence_edit import SequenceEditor

POSITIONS = ("release", "original")
TEXTS = ("after", "all")
COUNTS = ("crop", "image")
CROP_FAMILIES = ("llava_next",)  # the released path with crops: each picks from its full projected grid


@dataclass
class CropFeatures:
    """Install: LLaVA-NeXT's projector output per crop ([crops, patches, D], padding included), as the release
    selects from it; on other models it records nothing. `crops` walks a prefill's images sample by sample."""

    last: Tensor | None = None
    editor: SequenceEditor | None = None
    _handles: list[Any] = field(default_factory=list)
    _for: Any = None
    _image: int = 0
    _crop: int = 0

    def __call__(self, editor: SequenceEditor) -> CropFeatures:
        self.editor = editor
        if getattr(editor.model.config, "model_type", None) in CROP_FAMILIES:
            self._handles = [projector(editor.model).register_forward_hook(lambda mod, args, out: self._keep(out))]
        return self

    def _keep(self, out: Any) -> None:
        if isinstance(out, Tensor) and out.dim() == 3:
            self.last = out.detach().float()

    def active(self) -> bool:
        return bool(self._handles)

    def crops(self, visual: Tensor) -> list[tuple[int, Tensor, Tensor]]:
        """(run start, [crops, patches, D] features, run token -> crop x patches + patch or -1) per image of the
        sample, in order."""
        editor = self.editor
        if editor is None or self.last is None:
            raise RuntimeError("cdpruner: no projector call was recorded for this prefill")
        if self._for is not editor.history[-1]:
            self._for, self._image, self._crop = editor.history[-1], 0, 0
        sizes = editor.media_kwargs.get("image_sizes")
        patches = self.last.shape[1]
        out = []
        for start, end in visual_runs(visual.cpu()):
            size = None if sizes is None else tuple(int(v) for v in sizes[self._image].tolist())
            high, wide, sources = crop_sources(editor.model.config, size, patches)
            count = 1 + high * wide
            if sources.numel() != end - start or self._crop + count > self.last.shape[0]:
                raise RuntimeError(f"cdpruner: image {self._image} has {end - start} tokens in the sequence, its "
                                   f"crops account for {sources.numel()}")
            out.append((start, self.last[self._crop:self._crop + count], sources))
            self._image += 1
            self._crop += count
        return out

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.editor = None


def instruction(seen: DropInput, span: str) -> Tensor:
    """[m, D] the instruction's input embeddings: the text after the last visual token (`after`; all the text if
    none follows it) or every text token (`all`)."""
    text = ~seen.visual
    if span == "after":
        last = int(torch.nonzero(seen.visual).flatten()[-1])
        after = text.clone()
        after[:last + 1] = False
        text = after if bool(after.any()) else text
    if not bool(text.any()):
        raise TampError("cdpruner: the prompt has no text tokens to condition on; give the model a question")
    return seen.hidden[text].float()


def plan(params: dict[str, Any], num_layers: int) -> TokenPlan:
    keep, span = float(params["cdpruner_keep"]), str(params["cdpruner_text"])
    theta = float(params["cdpruner_theta"])
    weight = theta if theta >= 0 else None
    repack = str(params["cdpruner_positions"]) == "release"
    per_image = str(params["cdpruner_count"]) == "image"
    capture = CropFeatures()

    def choose(seen: DropInput) -> Kept:
        kept = ~seen.visual.clone()
        # crops: (features [n, D], the sequence positions it decides, or a run's source map)
        crops: list[tuple[Tensor, Tensor]] = []
        layouts: list[tuple[int, Tensor, int, int]] = []  # (run start, sources, first crop, crops)
        counts: list[int] = []
        # image count: each crop picks among its patches the prompt holds (None: all of them)
        among: list[Tensor | None] = []
        if capture.active():
            for start, features, sources in capture.crops(seen.visual):
                layouts.append((start, sources, len(crops), features.shape[0]))
                crops += [(features[c], torch.empty(0, dtype=torch.long)) for c in range(features.shape[0])]
                patches, n_crops = features.shape[1], features.shape[0]
                if per_image:
                    held = sources[sources >= 0].cpu()
                    where = [torch.sort(held[held // patches == c] % patches).values for c in range(n_crops)]
                    total = max(keep_count(sources.numel(), keep) - int((sources < 0).sum()), n_crops)
                    counts += crop_counts([int(w.numel()) for w in where], total)
                    among += where
                else:
                    counts += [keep_count(patches, keep)] * n_crops
                    among += [None] * n_crops
        else:
            groups = seen.groups.cpu()
            for group in torch.unique(groups[groups >= 0]).tolist():
                members = torch.nonzero(groups == group).flatten()
                crops.append((seen.hidden[members.to(seen.hidden.device)].float(), members))
                counts.append(keep_count(members.numel(), keep))
                among.append(None)
        text = instruction(seen, span)
        relevance = normalise(torch.cat([raw_relevance(x, text.to(x.device)) for x, _ in crops]))
        picks, flops, offset = [], 0.0, 0
        for (x, _), count, where in zip(crops, counts, among):
            rel = relevance[offset:offset + x.shape[0]]
            offset += x.shape[0]
            if where is not None:  # the release's min-max over every crop's patches, then the held ones only
                x, rel = x[where.to(x.device)], rel[where.to(rel.device)]
            chosen = greedy_map(conditional_kernel(x, rel, weight), count).cpu()
            picks.append(chosen if where is None else where[chosen])
            flops += choice_flops(x.shape[0], x.shape[1], text.shape[0], count)
        if layouts:
            for start, sources, first, n_crops in layouts:
                patches = crops[first][0].shape[0]
                mask = torch.zeros(n_crops * patches, dtype=torch.bool)
                for c in range(n_crops):
                    mask[c * patches + picks[first + c]] = True
                run = (sources < 0) | mask[sources.clamp_min(0)]
                kept[start:start + sources.numel()] = run.to(kept.device)
        else:
            for (_, members), chosen in zip(crops, picks):
                kept[members[chosen].to(kept.device)] = True
        return Kept(torch.nonzero(kept).flatten(), flops=flops, repack=repack)

    return TokenPlan({0: Drop(choose)}, (capture,))


def _theta(v: float) -> str | None:
    return None if v == -1 or 0 <= v < 1 else f"cdpruner_theta must be -1 (off) or in [0, 1), got {v}"


PARAMS = (
    Param("cdpruner_keep", float, 64 / 576, "share of each crop's visual tokens kept (the release's "
          "visual_token_num per crop: 64 of 576)",
          check=lambda v: f"cdpruner_keep must be in [0, 1], got {v}" if not 0 <= v <= 1 else None),
    Param("cdpruner_theta", float, -1.0, "relevance weight exp(theta / (2 (1 - theta)) r) of the release's "
          "commented-out variant; -1: off, the relevance as is (the release's code)", check=_theta),
    Param("cdpruner_text", str, "after", "the instruction: after = the text after the last visual token (the "
          "question that follows the image), all = every text token", choices=TEXTS),
    Param("cdpruner_positions", str, "release", "release: the kept tokens re-packed at positions 0..T'-1 (the "
          "released code); original: each keeps its own position", choices=POSITIONS),
    Param("cdpruner_count", str, "crop", "crop: cdpruner_keep of each crop's tokens (the release); image: of each "
          "image's visual tokens in the prompt, LLaVA-NeXT's newlines counted in (the common token budget's)",
          choices=COUNTS),
)

METHOD = TokenMethod(
    name="cdpruner", label="CDPruner", order=29,
    summary="keep each crop's visual tokens picked by a DPP conditioned on the instruction (projected-feature "
            "similarity x relevance to the question), before the LLM",
    params=PARAMS, plan=plan, budget=lambda share: {"cdpruner_keep": share, "cdpruner_count": "image"},
    attention=("none: no attention weights; the kernel comes from the projected visual features' cosine similarity "
               "and their cosine to the instruction's input embeddings (one n x n and one n x m matmul per crop)"),
)
