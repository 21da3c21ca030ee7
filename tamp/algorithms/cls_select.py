"""Token choices driven by a vision encoder's [CLS] attention: VisionZip's dominant + contextual tokens and
VisPruner's important + diverse tokens, for one crop (one image, or one LLaVA-NeXT tile).

VisionZip (JIA-Lab-research/VisionZip, `visionzip/clip_encoder.py`): the `dominant` patches the [CLS] query
attends to most at the feature layer (attention summed over heads) are kept with the [CLS] token itself; of the
rest (in their order), every `step`-th (step = max(1, rest // contextual)) becomes a target, each other token
joins the target its key (the layer's keys averaged over heads, L2-normalised) is most similar to (argmax, first
on ties), and a contextual token is its target's state plus the mean of the states that joined it (the release's
sum, not a mean over the target and its members).

VisPruner (Theia-4869/VisPruner, `llava/model/llava_arch.py`): the round(count x ratio) patches with the most
[CLS] attention (mean over heads) are important; from the others, in descending attention, up to 8 tokens per
round are removed: the even slots are matched to the odd slots by cosine similarity of the features, and the
even-slot tokens most similar to some odd-slot token leave, until `count` tokens remain in all (a round asked to
remove more than the even slots removes them all, as the release's slicing does).
"""

from __future__ import annotations

import torch
from torch import Tensor

# bumped when what this module computes changes: the artifact keys of the methods using it cover it
VERSION = 1
ROUND = 8  # VisPruner's most tokens removed per matching round (`min(8, R - diverse)`)


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def visionzip_targets(rest: int, contextual: int) -> Tensor:
    """Indices (within the tokens left after the dominant ones) of the release's contextual targets."""
    if contextual <= 0 or rest <= 0:
        return torch.zeros(0, dtype=torch.long)
    step = max(1, rest // contextual)
    return torch.arange(0, rest, step)[:contextual]


def visionzip_select(cls_attention: Tensor, keys: Tensor, hidden: Tensor, dominant: int,
                     contextual: int) -> tuple[Tensor, Tensor]:
    """One crop. cls_attention [N]: the [CLS] row over the N patches (summed over heads); keys [N + 1, d] and
    hidden [N + 1, C]: the feature layer's mean key and output state of [CLS] (row 0) and each patch.
    -> (the dominant patches, 0-based among the patches, ascending; [contextual', C] contextual states), with
    contextual' = min(contextual, the patches left)."""
    n = cls_attention.shape[0]
    if keys.shape[0] != n + 1 or hidden.shape[0] != n + 1:
        raise ValueError(f"keys / hidden must have the [CLS] row plus {n} patches, got {keys.shape[0]} / "
                         f"{hidden.shape[0]}")
    dominant = max(0, min(dominant, n))
    top = torch.topk(cls_attention, dominant).indices if dominant else torch.zeros(0, dtype=torch.long)
    chosen = torch.sort(top).values
    left = torch.ones(n, dtype=torch.bool, device=hidden.device)
    left[chosen] = False
    rest = torch.nonzero(left).flatten() + 1  # rows of keys / hidden
    targets = visionzip_targets(rest.numel(), contextual).to(hidden.device)
    if targets.numel() == 0:
        return chosen, hidden.new_zeros(0, hidden.shape[1])
    others = torch.ones(rest.numel(), dtype=torch.bool, device=hidden.device)
    others[targets] = False
    metric = _unit(keys[rest])
    similarity = metric[others] @ metric[targets].t()  # [members, targets]
    assign = torch.argmax(similarity, dim=1) if similarity.shape[0] else torch.zeros(0, dtype=torch.long)
    sums = hidden.new_zeros(targets.numel(), hidden.shape[1]).index_add_(0, assign, hidden[rest[others]])
    counts = torch.bincount(assign, minlength=targets.numel()).clamp_min(1).to(hidden.dtype)
    return chosen, hidden[rest[targets]] + sums / counts[:, None]


def visionzip_flops(patches: int, dominant: int, contextual: int, key_dim: int) -> float:
    """The matmul FLOPs of one crop's contextual assignment (members x targets similarities of key_dim)."""
    rest = max(0, patches - min(dominant, patches))
    targets = int(visionzip_targets(rest, contextual).numel())
    return 2.0 * (rest - targets) * targets * key_dim


def vispruner_keep(cls_attention: Tensor, features: Tensor, count: int, important_ratio: float) -> Tensor:
    """One crop. cls_attention [N]: the [CLS] row over the patches (mean over heads); features [N, C]: the patches'
    feature-layer states. -> the `count` patches kept, ascending (all N when count >= N)."""
    n = cls_attention.shape[0]
    if count >= n:
        return torch.arange(n, device=features.device)
    important = int(count * important_ratio)
    diverse = count - important
    order = torch.argsort(cls_attention, descending=True, stable=True)
    kept, residual = order[:important], order[important:]
    unit = _unit(features)
    while diverse > 0:
        r = min(ROUND, residual.numel() - diverse)
        if r <= 0:
            break
        even, odd = residual[0::2], residual[1::2]
        best = (unit[even] @ unit[odd].t()).max(dim=1).values
        distinct = torch.argsort(best, descending=True, stable=True)[r:]
        residual = torch.cat([even[distinct], odd])
    if diverse > 0:
        kept = torch.cat([kept, residual])
    return torch.sort(kept).values


def vispruner_flops(patches: int, count: int, important_ratio: float, width: int) -> float:
    """The matmul FLOPs of one crop's matching rounds (even x odd slots of width `width`, each round)."""
    if count >= patches:
        return 0.0
    diverse = count - int(count * important_ratio)
    residual, flops = patches - int(count * important_ratio), 0.0
    while diverse > 0:
        r = min(ROUND, residual - diverse)
        if r <= 0:
            break
        flops += 2.0 * ((residual + 1) // 2) * (residual // 2) * width
        residual -= min(r, (residual + 1) // 2)  # a round removes at most every even slot
    return flops
