"""The sequential engine against slow re-statements: capture/replay, Wanda vs a full forward per layer."""

from __future__ import annotations

import pytest
import torch

from tamp.calibration.loader import build_calibration
from tamp.engine.capture import capture_block_inputs, run_block
from tamp.engine.sequential import prune_model
from tamp.models.adapters import get_adapter, prunable_linears
from tamp.models.loading import load_model
from tamp.recipe import resolve_parts, weight_config

FAMILIES = ("llama", "qwen2", "llava", "llava-next", "qwen2-vl", "qwen2.5-vl",
            "qwen3-vl", "internvl3", "gemma3", "smolvlm")


def _setup(tiny_model, family: str, nsamples: int = 3):
    loaded = load_model(str(tiny_model(family)))
    calib = build_calibration("synthetic", loaded, nsamples, 24, seed=0)
    return loaded, get_adapter(loaded.model), calib.batches


@pytest.mark.parametrize("family", FAMILIES)
def test_replaying_captured_inputs_reproduces_the_model(tiny_model, family):
    """Block 0's captured arguments, replayed through every block, give what the model computes itself."""
    loaded, adapter, batches = _setup(tiny_model, family)
    model = loaded.model
    stack = adapter.language_stack(model)
    norm = model.get_submodule(stack.name.rsplit(".", 1)[0] + ".norm")
    expected = []
    handle = norm.register_forward_pre_hook(lambda m, args: expected.append(args[0].clone()))
    with torch.inference_mode():
        for batch in batches:
            model(**batch, use_cache=False)
    handle.remove()
    items = capture_block_inputs(model, stack.layers[0], batches, torch.device("cpu"), torch.device("cpu"))
    with torch.inference_mode():
        for item, want in zip(items, expected):
            hidden = item.hidden
            for layer in stack.layers:
                item.hidden = hidden
                hidden = run_block(layer, item, torch.device("cpu"))
            torch.testing.assert_close(hidden, want, rtol=1e-5, atol=1e-5)


def _slow_wanda(model, adapter, batches, sparsity):
    """Wanda by the book: for each block, a full model forward to gather its inputs, then per-row pruning."""
    stack = adapter.language_stack(model)
    for layer in stack.layers:
        linears = prunable_linears(layer)
        sq = {name: torch.zeros(mod.in_features, dtype=torch.float64) for name, mod in linears.items()}
        def hook(module, args, output, name, sq=sq):
            sq[name].add_((args[0].double() ** 2).reshape(-1, args[0].shape[-1]).sum(0))

        handles = [mod.register_forward_hook(lambda m, a, o, name=name: hook(m, a, o, name))
                   for name, mod in linears.items()]
        with torch.inference_mode():
            for batch in batches:
                model(**batch, use_cache=False)
        for h in handles:
            h.remove()
        with torch.no_grad():
            for name, mod in linears.items():
                w = mod.weight
                k = int(w.shape[1] * sparsity)
                for r in range(w.shape[0]):
                    score = [(abs(float(w[r, c])) * float(sq[name][c]) ** 0.5, c) for c in range(w.shape[1])]
                    for _, c in sorted(score)[:k]:
                        w[r, c] = 0.0


@pytest.mark.parametrize("family", ("llama", "llava-next", "qwen2-vl"))
def test_sequential_wanda_matches_full_forward_per_layer(tiny_model, family):
    loaded, adapter, batches = _setup(tiny_model, family)
    reference, _, _ = _setup(tiny_model, family)
    cfg = weight_config("wanda", sparsity=0.5)
    prune_model(loaded.model, adapter, batches, cfg, resolve_parts(cfg), "cpu")
    _slow_wanda(reference.model, adapter, batches, 0.5)
    for (name, a), (_, b) in zip(loaded.model.named_parameters(), reference.model.named_parameters()):
        assert torch.equal(a == 0, b == 0), f"mask differs in {name}"


def test_each_block_runs_twice_per_batch(tiny_model):
    """Linear cost in depth: statistics pass + re-run pass, never a forward through earlier blocks."""
    loaded, adapter, batches = _setup(tiny_model, "llama", nsamples=4)
    calls = {}
    stack = adapter.language_stack(loaded.model)
    for i, layer in enumerate(stack.layers):
        layer.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls.get(i, 0) + 1))
    cfg = weight_config("sparsegpt")
    prune_model(loaded.model, adapter, batches, cfg, resolve_parts(cfg), "cpu")
    # block 0 is also entered once per batch by the capture forward (stopped by the hook before it runs)
    assert calls == {0: 3 * len(batches), **{i: 2 * len(batches) for i in range(1, len(stack.layers))}}


def test_offload_mode_gives_the_same_weights(tiny_model):
    a, adapter, batches = _setup(tiny_model, "llava-next")
    b, _, _ = _setup(tiny_model, "llava-next")
    cfg = weight_config("sparsegpt")
    prune_model(a.model, adapter, batches, cfg, resolve_parts(cfg), "cpu", offload=False)
    prune_model(b.model, adapter, batches, cfg, resolve_parts(cfg), "cpu", offload=True)
    for (name, x), (_, y) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(x, y), name


def test_shared_inputs_are_detected(tiny_model):
    """q/k/v and gate/up read one tensor; their statistics are shared and identical to separate ones."""
    from tamp.engine.stats import StatsCollector

    loaded, adapter, batches = _setup(tiny_model, "llama")
    stack = adapter.language_stack(loaded.model)
    items = capture_block_inputs(loaded.model, stack.layers[0], batches, torch.device("cpu"), torch.device("cpu"))
    linears = prunable_linears(stack.layers[0])
    shared = StatsCollector(linears, True, True)
    with torch.inference_mode():
        for item in items:
            shared.next_batch()
            run_block(stack.layers[0], item, torch.device("cpu"))
    shared.remove()
    assert shared._shared == {"self_attn.k_proj": "self_attn.q_proj", "self_attn.v_proj": "self_attn.q_proj",
                              "mlp.up_proj": "mlp.gate_proj"}
    for name, mod in linears.items():
        separate = StatsCollector({name: mod}, True, True)
        with torch.inference_mode():
            for item in items:
                separate.next_batch()
                run_block(stack.layers[0], item, torch.device("cpu"))
        separate.remove()
        torch.testing.assert_close(shared.result(name).col_sq, separate.result(name).col_sq)
        torch.testing.assert_close(shared.result(name).hessian, separate.result(name).hessian)
