"""rows_attention's post-softmax zeroing (the released YOPO's masking) against one dense softmax whose visual
columns are then multiplied by zero in the chosen heads, without renormalising."""

from __future__ import annotations

import torch

from tamp.algorithms.attention_window import rows_attention


def test_zeroing_equals_a_dense_softmax_with_visual_columns_multiplied_by_zero() -> None:
    gen = torch.Generator().manual_seed(0)
    heads, rows, keys, d, window = 3, 5, 9, 4, 5
    q = torch.randn(heads, rows, d, generator=gen)
    k, v = torch.randn(heads, keys, d, generator=gen), torch.randn(heads, keys, d, generator=gen)
    visual = torch.tensor([False, True, True, False, True, True, False, True, False])
    allowed = torch.rand(rows, keys, generator=gen) > 0.3
    allowed[:, 0] = True
    zero = torch.tensor([True, False, True])
    # dense: every key in one set
    probs = torch.softmax((q @ k.transpose(-1, -2) * 0.5).masked_fill(~allowed, float("-inf")), dim=-1)
    want = (probs * torch.where(zero[:, None, None] & visual[None, None, :], 0.0, 1.0)) @ v
    got = rows_attention(q, k, v, allowed, None, None, None, 0.5, zero, visual)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert float((got - probs @ v).abs().max()) > 1e-3  # the zeroing did something
    # split: the non-visual keys dense, the visual ones gathered per row (all of them, as a window would)
    text, vis = torch.nonzero(~visual).flatten(), torch.nonzero(visual).flatten()
    index = vis[None, :].expand(rows, -1)
    got_split = rows_attention(q, k[:, text], v[:, text], allowed[:, text], k[:, index], v[:, index],
                               allowed[:, vis], 0.5, zero)
    assert index.shape[1] == window
    torch.testing.assert_close(got_split, want, rtol=1e-5, atol=1e-6)
