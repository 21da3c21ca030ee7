"""tamp.models.internals on every tiny family: each transformers internal tamp relies on is where it looks (an
upgrade that moves one fails here, naming the version and the internal), and a missing one gives that message."""

from __future__ import annotations

import sys

import pytest
import torch
import transformers
from torch import nn

from tamp.families.registry import tiny_families
from tamp.models import internals
from tamp.models.adapters import get_adapter


@pytest.fixture(scope="module")
def loaded(tiny_model):
    """family -> (model, path of its decoder layers), loaded once per module."""
    from tamp.models.loading import load_model

    cache: dict[str, tuple[nn.Module, str]] = {}

    def get(family: str) -> tuple[nn.Module, str]:
        if family not in cache:
            model = load_model(str(tiny_model(family))).model
            cache[family] = (model, get_adapter(model).language_stack(model).name)
        return cache[family]

    return get


@pytest.mark.parametrize("family", tiny_families())
def test_every_internal_is_where_tamp_looks(loaded, family: str) -> None:
    model, path = loaded(family)
    checked = internals.check_model(model, path)  # a moved internal raises MovedInternal here
    assert internals.IMPLEMENTATION_FIELD in checked and "q_proj" in checked and "gate_proj" in checked
    block = model.get_submodule(path)[0]
    attn = internals.self_attention(block)
    assert internals.attention_implementation(attn.config) in ("sdpa", "eager")
    assert internals.eager_attention(attn).__name__ == internals.EAGER_FUNCTION
    heads, head_dim = internals.attention_heads(block)
    projections = internals.attention_projections(block)
    assert projections.q.out_features == heads * head_dim == projections.o.in_features
    mlp = internals.gated_mlp(block)
    assert mlp.gate.out_features == mlp.up.out_features == mlp.down.in_features
    hidden = projections.q.in_features
    norm = internals.final_norm(model, path)
    assert norm is not block and tuple(norm.weight.shape) == (hidden,)


@pytest.mark.parametrize("family", tiny_families())
def test_replacing_one_instance_forward_is_undone(loaded, family: str) -> None:
    model, path = loaded(family)
    mlp = internals.gated_mlp(model.get_submodule(path)[0]).module
    x = torch.randn(1, 3, mlp.gate_proj.in_features)
    with torch.no_grad():
        before = mlp(x)
        internals.replace_forward(mlp, lambda t: torch.zeros_like(t))
        try:
            assert torch.equal(mlp(x), torch.zeros_like(x))
        finally:
            internals.restore_forward(mlp)
        assert torch.equal(mlp(x), before)


def _owner(model: nn.Module, path: str, what: str) -> tuple[object, str]:
    """(object, attribute) whose removal simulates an upgrade moving `what`."""
    block = model.get_submodule(path)[0]
    attn = internals.self_attention(block)
    return {
        "config": (attn.config, internals.IMPLEMENTATION_FIELD),
        "eager": (sys.modules[type(attn).__module__], internals.EAGER_FUNCTION),
        "self_attn": (block, "self_attn"),
        "q_proj": (attn, "q_proj"),
        "gate_proj": (internals.gated_mlp(block).module, "gate_proj"),
        "norm": (model.get_submodule(path.rsplit(".", 1)[0]), "norm"),
    }[what]


@pytest.mark.parametrize("what", ["config", "eager", "self_attn", "q_proj", "gate_proj", "norm"])
@pytest.mark.parametrize("family", tiny_families())
def test_a_moved_internal_names_the_version_and_itself(loaded, family: str, what: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    model, path = loaded(family)
    owner, name = _owner(model, path, what)
    monkeypatch.delattr(owner, name)
    if what == "config" and hasattr(owner, name):  # a class-level default: hide it too
        monkeypatch.delattr(type(owner), name)
    with pytest.raises(internals.MovedInternal) as caught:
        internals.check_model(model, path)
    message = str(caught.value)
    assert f"transformers {transformers.__version__}" in message and name in message
    assert len(message.splitlines()) == 1
