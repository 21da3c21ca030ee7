"""tamp.quant_export: quantized decoder linears written as a compressed-tensors checkpoint and loaded back with plain
transformers (`<Family>ForConditionalGeneration.from_pretrained`) on the CPU.

The loaded weights are scale x integer, rebuilt by the library from what we stored: equal to our dequantized weights
exactly in fp32 (a wrong scale or zero-point convention moves every one of them). The logits of the loaded model and
of our fake-quantized model run the same fp32 matmuls on the same weights; they are compared within 1e-5 all the
same (a kernel may pick another summation order on another CPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open
from transformers import CompressedTensorsConfig

from tamp.algorithms.quantize import Quantized, gptq_quantize, rtn_quantize, sparsegpt_quantize
from tamp.engine.context import matrices_to_prune
from tamp.errors import TampError
from tamp.families.registry import families
from tamp.models.adapters import get_adapter
from tamp.models.loading import load_model
from tamp.quant_export import (
    QuantSpec,
    checkpoint_weight,
    export_quantized,
    stored_tensor_bytes,
    stored_weight_bytes,
)
from tamp.testing.tiny import tiny_families

# the tiny models' decoder linears take 64 or 128 inputs: 32 divides both (128, the usual group, divides only half)
GROUP = 32
LOGIT_TOL = 1e-5
# transformers says that the checkpoint's own quantization_config is used, with our dequantize=True on top: expected
pytestmark = pytest.mark.filterwarnings("ignore:You passed `quantization_config`:UserWarning")


def _tiny(tiny_model, family: str, dtype: torch.dtype = torch.float32):
    model = load_model(str(tiny_model(family)), dtype="float32").model.to(dtype)
    return model, matrices_to_prune(model, get_adapter(model).stacks(model, prune_vision=False))


def _export(model, quantized: dict[str, Quantized], spec: QuantSpec, family: str, source: Path, out: Path) -> Path:
    extra = {name: source / name for name in families()[family].extra_files}
    return export_quantized(model, quantized, spec, out, extra_files=extra)


def _load(family: str, path: Path, dtype: torch.dtype = torch.float32, dequantize: bool = True):
    """The family's transformers class, as a user loads the checkpoint (dequantized at load unless told not to)."""
    cls = getattr(transformers, families()[family].model_class)
    kwargs = {"quantization_config": CompressedTensorsConfig(dequantize=True)} if dequantize else {}
    return cls.from_pretrained(path, dtype=dtype, **kwargs).eval()


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return get_adapter(model).runner(model)(input_ids=ids).logits


def _fake_quantized(model, quantized: dict[str, Quantized], dtype: torch.dtype):
    """Our model with each quantized matrix replaced by the weights the checkpoint holds."""
    for name, q in quantized.items():
        model.get_submodule(name).weight.data = checkpoint_weight(q, dtype)
    return model


def _check_round_trip(model, loaded, quantized: dict[str, Quantized], dtype: torch.dtype = torch.float32,
                      tol: float = LOGIT_TOL) -> None:
    """Logits first (a model loaded without dequantize=True decompresses on its first forward), then the weights."""
    ids = torch.randint(3, 200, (2, 9), generator=torch.Generator().manual_seed(0))
    got = _logits(loaded, ids)
    torch.testing.assert_close(got, _logits(_fake_quantized(model, quantized, dtype), ids), rtol=0, atol=tol)
    for name, q in quantized.items():
        assert torch.equal(loaded.get_submodule(name).weight, checkpoint_weight(q, dtype)), name
    for name, module in model.named_modules():  # everything else (vision tower, projector, LM head) untouched
        if isinstance(module, torch.nn.Linear) and name not in quantized:
            assert torch.equal(loaded.get_submodule(name).weight, module.weight), name


def _stored_keys(path: Path) -> dict[str, list[int]]:
    shapes = {}
    for file in path.glob("*.safetensors"):
        with safe_open(str(file), "pt") as fh:
            shapes.update({key: list(fh.get_slice(key).get_shape()) for key in fh.keys()})
    return shapes


@pytest.mark.parametrize("family", tiny_families())
def test_w4_groups_round_trip_on_every_family(tiny_model, family: str, tmp_path: Path) -> None:
    """RTN w4 (groups of 32, symmetric) on every decoder linear: exact weights, same logits, a config vLLM reads."""
    model, linears = _tiny(tiny_model, family)
    quantized = {name: rtn_quantize(linear.weight, 4, GROUP) for name, linear in linears.items()}
    for q in quantized.values():  # fp32: what the checkpoint rebuilds is our dequantized matrix itself
        assert torch.equal(checkpoint_weight(q, torch.float32), q.weight)
    out = _export(model, quantized, QuantSpec(4, GROUP), family, tiny_model(family), tmp_path / "q")
    _check_round_trip(model, _load(family, out), quantized)

    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "pack-quantized"
    assert config["quantization_status"] == "compressed"
    (group,) = config["config_groups"].values()
    assert group["targets"] == ["Linear"]
    assert group["weights"]["strategy"] == "group"
    assert (group["weights"]["num_bits"], group["weights"]["group_size"], group["weights"]["symmetric"]) == (4, 32, True)
    ignore = set(config["ignore"])
    # transformers matches module names: every unquantized Linear is listed by its own
    kept = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in quantized}
    assert kept <= ignore and not ignore & set(quantized)
    # vLLM matches the checkpoint's names: every stored matrix is packed, or ignored, or an embedding's table
    stored = _stored_keys(out)
    packed = {key.removesuffix(".weight_packed") for key in stored if key.endswith(".weight_packed")}
    assert len(packed) == len(quantized) and not packed & ignore
    dense = {key.removesuffix(".weight") for key, shape in stored.items() if key.endswith(".weight") and len(shape) == 2}
    embeddings = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Embedding)}
    assert all(name.rsplit(".", 1)[-1] in embeddings for name in dense - ignore), sorted(dense - ignore)


@pytest.mark.parametrize("family", tiny_families())
def test_w8_channelwise_round_trip_on_every_family(tiny_model, family: str, tmp_path: Path) -> None:
    """RTN w8, one grid per row (group -1: the library's "channel" strategy, one scale column)."""
    model, linears = _tiny(tiny_model, family)
    quantized = {name: rtn_quantize(linear.weight, 8, -1) for name, linear in linears.items()}
    out = _export(model, quantized, QuantSpec(8, -1), family, tiny_model(family), tmp_path / "q")
    _check_round_trip(model, _load(family, out), quantized)
    (group,) = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"].values()
    assert group["weights"]["strategy"] == "channel" and group["weights"]["group_size"] is None
    scales = [shape for key, shape in _stored_keys(out).items() if key.endswith(".weight_scale")]
    assert len(scales) == len(quantized) and all(shape[1] == 1 for shape in scales)


@pytest.mark.parametrize(("family", "bits", "group"), [("qwen2", 4, GROUP), ("llava-next", 8, GROUP), ("qwen2-vl", 4, -1)])
def test_asymmetric_grids_round_trip(tiny_model, family: str, bits: int, group: int, tmp_path: Path) -> None:
    """Asymmetric grids: our unsigned zero point z becomes the library's signed z - 2^(b-1), packed along the rows."""
    model, linears = _tiny(tiny_model, family)
    quantized = {name: rtn_quantize(linear.weight, bits, group, sym=False) for name, linear in linears.items()}
    assert any(bool((q.zero != 2 ** (bits - 1)).any()) for q in quantized.values())  # the zero points do move
    out = _export(model, quantized, QuantSpec(bits, group, symmetric=False), family, tiny_model(family), tmp_path / "q")
    zero_points = [shape for key, shape in _stored_keys(out).items() if key.endswith(".weight_zero_point")]
    assert len(zero_points) == len(quantized)
    for q in quantized.values():  # (ceil(d_out x bits / 32), groups) int32 words per matrix
        d_out, n_groups = q.scale.shape
        assert [math.ceil(d_out * bits / 32), n_groups] in zero_points
    _check_round_trip(model, _load(family, out), quantized)


def test_default_transformers_load_keeps_weights_packed_until_the_first_forward(tiny_model, tmp_path: Path) -> None:
    """Without dequantize=True, transformers loads the packed tensors as they are and the library decompresses every
    module on the model's first forward (a pre-hook on the top-level model)."""
    model, linears = _tiny(tiny_model, "llava-next")
    quantized = {name: rtn_quantize(linear.weight, 4, GROUP) for name, linear in linears.items()}
    out = _export(model, quantized, QuantSpec(4, GROUP), "llava-next", tiny_model("llava-next"), tmp_path / "q")
    loaded = _load("llava-next", out, dequantize=False)
    name = next(iter(quantized))
    before = dict(loaded.get_submodule(name).named_parameters())
    assert "weight" not in before and before["weight_packed"].dtype == torch.int32
    _check_round_trip(model, loaded, quantized)  # its forward runs first, decompressing


def test_bf16_round_trip_rounds_only_the_scales(tiny_model, tmp_path: Path) -> None:
    """A bf16 model stores bf16 scales (the library's and vLLM's convention): the loaded weights are the integers x
    the rounded scales, which `checkpoint_weight` computes, exactly."""
    model, linears = _tiny(tiny_model, "llama", torch.bfloat16)
    quantized = {name: rtn_quantize(linear.weight.float(), 4, GROUP) for name, linear in linears.items()}
    out = _export(model, quantized, QuantSpec(4, GROUP), "llama", tiny_model("llama"), tmp_path / "q")
    assert set(_scale_dtypes(out)) == {torch.bfloat16}
    # the same bf16 matmuls on the same weights: bf16's own rounding is the tolerance
    _check_round_trip(model, _load("llama", out, torch.bfloat16), quantized, torch.bfloat16, tol=2e-2)


def _scale_dtypes(path: Path) -> list[torch.dtype]:
    out = []
    for file in path.glob("*.safetensors"):
        with safe_open(str(file), "pt") as fh:
            out += [fh.get_tensor(key).dtype for key in fh.keys() if key.endswith(".weight_scale")]
    return out


def _hessian(d_in: int, seed: int) -> torch.Tensor:
    x = torch.randn(256, d_in, generator=torch.Generator().manual_seed(seed)) * torch.linspace(0.2, 3.0, d_in)
    return x.T @ x


def test_gptq_act_order_with_static_groups_round_trips(tiny_model, tmp_path: Path) -> None:
    """GPTQ with act-order keeps its groups in column order with static groups: stored with actorder "weight"."""
    model, linears = _tiny(tiny_model, "qwen2")
    quantized = {name: gptq_quantize(linear.weight, _hessian(linear.in_features, i), 4, GROUP, act_order=True,
                                     static_groups=True, blocksize=32)
                 for i, (name, linear) in enumerate(linears.items())}
    out = _export(model, quantized, QuantSpec(4, GROUP, act_order=True), "qwen2", tiny_model("qwen2"), tmp_path / "q")
    (group,) = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"].values()
    assert group["weights"]["actorder"] == "weight"
    _check_round_trip(model, _load("qwen2", out), quantized)


def test_act_order_regrouped_columns_are_refused(tiny_model, tmp_path: Path) -> None:
    """Act-order without static groups regroups columns (GPTQ's g_idx), which compressed-tensors 0.20 removed."""
    model, linears = _tiny(tiny_model, "qwen2")
    name, linear = next(iter(linears.items()))
    q = gptq_quantize(linear.weight, _hessian(linear.in_features, 0), 4, GROUP, act_order=True)
    assert not torch.equal(q.group, torch.arange(linear.in_features) // GROUP)
    with pytest.raises(TampError, match="g_idx"):
        export_quantized(model, {name: q}, QuantSpec(4, GROUP, act_order=True), tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_sparse_and_quantized_weights_keep_their_zeros(tiny_model, tmp_path: Path) -> None:
    """SparseGPT's joint prune + quantize at 50%: every pruned weight loads back exactly zero."""
    model, linears = _tiny(tiny_model, "qwen2")
    quantized, masks = {}, {}
    for i, (name, linear) in enumerate(linears.items()):
        quantized[name], masks[name] = sparsegpt_quantize(linear.weight, _hessian(linear.in_features, i), 0.5,
                                                          bits=4, group_size=GROUP, blocksize=32)
    out = _export(model, quantized, QuantSpec(4, GROUP), "qwen2", tiny_model("qwen2"), tmp_path / "q")
    loaded = _load("qwen2", out)
    for name, mask in masks.items():
        weight = loaded.get_submodule(name).weight
        assert bool(mask.any()) and bool((weight[mask] == 0).all()), name
    _check_round_trip(model, loaded, quantized)


@pytest.mark.parametrize(("bits", "group", "symmetric"), [(4, GROUP, True), (8, -1, True), (4, GROUP, False)])
def test_stored_bytes_of_each_quantized_matrix(tiny_model, tmp_path: Path, bits: int, group: int,
                                               symmetric: bool) -> None:
    """Each quantized matrix stores d_out x d_in x bits / 8 packed bytes, a scale per row and group in the model's
    dtype, two int64 for its shape and, asymmetric, the packed zero points; the rest of the checkpoint is unchanged."""
    model, linears = _tiny(tiny_model, "llama")
    quantized = {name: rtn_quantize(linear.weight, bits, group, symmetric) for name, linear in linears.items()}
    out = _export(model, quantized, QuantSpec(bits, group, symmetric), "llama", tiny_model("llama"), tmp_path / "q")
    sizes, dense = stored_tensor_bytes(out), stored_tensor_bytes(tiny_model("llama"))
    saved = 0
    for name, linear in linears.items():
        d_out, d_in = linear.weight.shape
        n_groups = 1 if group == -1 else d_in // group
        expected = d_out * math.ceil(d_in * bits / 32) * 4 + d_out * n_groups * 4 + 2 * 8
        if not symmetric:
            expected += math.ceil(d_out * bits / 32) * n_groups * 4
        stored = sum(size for key, size in sizes.items() if key.rsplit(".", 1)[0] == name)
        assert stored == expected, name
        saved += dense[f"{name}.weight"] - expected
    assert stored_weight_bytes(out) == stored_weight_bytes(tiny_model("llama")) - saved


def test_what_cannot_be_exported_is_said_in_one_line(tiny_model, tmp_path: Path) -> None:
    model, linears = _tiny(tiny_model, "llama")
    name, linear = next(iter(linears.items()))
    q = rtn_quantize(linear.weight, 4, GROUP)
    cases = [
        ({name: q}, QuantSpec(8, GROUP), "quantized with 4 bits"),
        ({name: rtn_quantize(linear.weight, 4, 48)}, QuantSpec(4, 48), "does not divide"),
        ({name: rtn_quantize(linear.weight, 4, GROUP, sym=False)}, QuantSpec(4, GROUP), "symmetric=False"),
        ({"model.norm": q}, QuantSpec(4, GROUP), "only nn.Linear"),
        ({"model.nothing": q}, QuantSpec(4, GROUP), "no such module"),
    ]
    for quantized, spec, message in cases:
        with pytest.raises(TampError, match=message) as err:
            export_quantized(model, quantized, spec, tmp_path / "q")
        assert "\n" not in str(err.value)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(TampError, match="not empty"):
        export_quantized(model, {name: q}, QuantSpec(4, GROUP), tmp_path / "full")
    with pytest.raises(TampError, match="no .safetensors"):
        stored_weight_bytes(tmp_path / "full")
