"""A uniform random share of each image's (or video frame's) visual tokens: the random baseline's choice."""

from __future__ import annotations

import torch
from torch import Tensor

from tamp.algorithms.token_keep import keep_count

# bumped when what this module computes changes: the artifact keys of the methods using it cover it
VERSION = 1


def random_group_keep(groups: Tensor, visual: Tensor, keep: float, generator: torch.Generator) -> Tensor:
    """Ascending positions kept of one sample: every non-visual token, and of each visual group (groups [T], -1
    outside visual tokens; groups in ascending id order) round(n x keep) of its n tokens, the first that many of
    `torch.randperm(n, generator)`. The draw is on the CPU, so a seed gives the same choice on any device."""
    if groups.shape != visual.shape or groups.dim() != 1:
        raise ValueError(f"groups and visual must be equal-length vectors, got {tuple(groups.shape)} and "
                         f"{tuple(visual.shape)}")
    cpu_groups, cpu_visual = groups.cpu(), visual.cpu()
    kept = ~cpu_visual
    for group in torch.unique(cpu_groups[cpu_visual & (cpu_groups >= 0)]).tolist():
        members = torch.nonzero(cpu_visual & (cpu_groups == group)).flatten()
        chosen = torch.randperm(members.numel(), generator=generator)[:keep_count(members.numel(), keep)]
        kept[members[chosen]] = True
    return torch.nonzero(kept).flatten().to(groups.device)
