"""The sliced gated MLP against the released code's way: full gate and up outputs with the channels beyond the
cut zeroed, then the full down projection."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP

from tamp.algorithms.ffn_slice import kept_channels, sliced_mlp


@pytest.mark.parametrize("bias", (False, True))
@pytest.mark.parametrize("keep", (1.0, 0.5, 0.3, 0.01))
def test_equals_zeroing_the_channels(bias: bool, keep: float) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=16, intermediate_size=40, num_attention_heads=2, num_key_value_heads=2, mlp_bias=bias)
    mlp = LlamaMLP(config).double()
    x = torch.randn(7, 16, dtype=torch.float64)
    channels = kept_channels(40, keep)
    gate, up = mlp.gate_proj(x), mlp.up_proj(x)
    gate[:, channels:] = 0
    up[:, channels:] = 0
    released = mlp.down_proj(mlp.act_fn(gate) * up)
    torch.testing.assert_close(sliced_mlp(x, mlp.gate_proj, mlp.up_proj, mlp.down_proj, mlp.act_fn, channels), released)


def test_channel_counts() -> None:
    assert kept_channels(11008, 0.5) == 5504 and kept_channels(40, 0.01) == 1 and kept_channels(40, 1.0) == 40
    with pytest.raises(ValueError, match="FFN keep"):
        kept_channels(40, 0.0)
