"""Quantized weights (tamp.algorithms.quantize's `Quantized`) written as a compressed-tensors checkpoint: the format
vLLM's compressed-tensors loader serves and transformers loads (`quant_method: compressed-tensors`).

Every quantized nn.Linear is stored in the library's ``pack-quantized`` format, int4 and int8 alike (its packer takes
1..8 bits; vLLM's weight-only kernels take 4 and 8): ``weight_packed`` (int32, d_out x d_in*bits/32), ``weight_scale``
(the model's dtype, d_out x groups; one column channel-wise), ``weight_shape`` (int64 [d_out, d_in]) and, for an
asymmetric grid, ``weight_zero_point`` (int32, packed along the output rows). ``config.json`` gets the library's
``quantization_config``: one config group targeting ``Linear`` and an ``ignore`` list naming every other Linear (LM
head, vision / audio towers, projector). The config, the scheme and the packing are the library's own
(QuantizationConfig, QuantizationScheme, PackedQuantizationCompressor, ModelCompressor.update_config); this module
only converts our grid to the library's convention and assembles the state dict.

Act-order: compressed-tensors 0.20 removed activation-order groups (``weight_g_idx``; its ``actorder="group"``
raises), so a matrix whose columns GPTQ regrouped is refused; GPTQ with ``static_groups=True`` keeps the groups in
column order and is stored with ``actorder="weight"`` (calibration-only metadata).
"""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from compressed_tensors.compressors import ModelCompressor
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.config import CompressionFormat
from compressed_tensors.quantization import (
    QuantizationArgs,
    QuantizationConfig,
    QuantizationScheme,
    QuantizationStatus,
)
from compressed_tensors.quantization.quant_config import _map_to_checkpoint_names
from torch import Tensor, nn

from tamp.algorithms.quantize import Quantized
from tamp.atomic_write import atomic_dir, write_text_atomic
from tamp.errors import TampError

FORMAT = CompressionFormat.pack_quantized.value  # "pack-quantized"
TARGET = "Linear"  # the config group's target: a module class name, as llm-compressor writes it

__all__ = ["FORMAT", "QuantSpec", "checkpoint_weight", "compressed_module", "export_quantized", "ignore_list",
           "quantization_config", "quantized_state_dict", "stored_tensor_bytes", "stored_weight_bytes",
           "write_quantized"]


@dataclass(frozen=True)
class QuantSpec:
    """How every exported matrix was quantized: `bits`, `group_size` (-1: one group per row), a symmetric grid or
    not, and whether GPTQ ordered its columns by activation (only recorded: the groups must be in column order)."""

    bits: int
    group_size: int = 128
    symmetric: bool = True
    act_order: bool = False

    def args(self) -> QuantizationArgs:
        """The library's description of the weights' grid (strategy "group" or "channel")."""
        if not 1 <= self.bits <= 8:
            raise TampError(f"quantized export: bits must be in 1..8 (pack-quantized), got {self.bits}")
        if self.group_size != -1 and self.group_size <= 0:
            raise TampError(f"quantized export: group size must be positive or -1 (channel-wise), got {self.group_size}")
        grouped = self.group_size != -1
        return QuantizationArgs(num_bits=self.bits, type="int", symmetric=self.symmetric,
                                strategy="group" if grouped else "channel",
                                group_size=self.group_size if grouped else None,
                                actorder="weight" if self.act_order else None)

    def scheme(self) -> QuantizationScheme:
        return QuantizationScheme(targets=[TARGET], weights=self.args(), format=FORMAT)


def _check_storable(q: Quantized, spec: QuantSpec, name: str) -> None:
    """Check that `q` is what `spec` says and that the library can store it: groups in column order, each of one
    size that divides d_in (the library's grouped dequantization, and vLLM's kernels, cut d_in into whole groups)."""
    d_out, d_in = q.codes.shape
    size = d_in if spec.group_size == -1 else spec.group_size
    problems = []
    if q.bits != spec.bits:
        problems.append(f"quantized with {q.bits} bits, the export says {spec.bits}")
    if d_in % size:
        problems.append(f"group size {size} does not divide its {d_in} input columns")
    elif q.scale.shape != (d_out, d_in // size):
        problems.append(f"has {tuple(q.scale.shape)} scales, group size {spec.group_size} needs {(d_out, d_in // size)}")
    elif not torch.equal(q.group.cpu(), torch.arange(d_in) // size):
        problems.append("has its columns regrouped by act-order, which compressed-tensors cannot store (it removed "
                        "g_idx): quantize with static groups or group size -1")
    if spec.symmetric and not bool((q.zero == 2 ** (q.bits - 1)).all()):
        problems.append("has zero points off the symmetric grid's middle: export it with symmetric=False")
    if problems:
        raise TampError(f"cannot export '{name}': " + "; ".join(problems))


def _steps_and_scale(q: Quantized, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Per weight: codes - zero (integers, fp32) and its group's scale rounded to `dtype` (back in fp32)."""
    index = q.group.to(q.scale.device).expand(q.codes.shape[0], -1)
    steps = q.codes.to(torch.float32) - q.zero.to(torch.float32).gather(1, index)
    return steps, q.scale.to(dtype).to(torch.float32).gather(1, index)


def checkpoint_weight(q: Quantized, dtype: torch.dtype) -> Tensor:
    """The weights a loader rebuilds from the checkpoint of a model in `dtype`: (codes - zero) x scale, with the
    scale first rounded to `dtype` (the checkpoint stores it in the model's dtype, as the library and vLLM do).
    Equal to `q.weight` in fp32; in bf16 / fp16 it differs from `q.weight` by the scale's rounding. The fp32
    product is exact for a bf16 / fp16 scale and |codes - zero| <= 256, so its one rounding to `dtype` is what the
    library computes in `dtype`."""
    steps, scale = _steps_and_scale(q, dtype)
    return (steps * scale).to(dtype)


def compressed_module(q: Quantized, spec: QuantSpec, dtype: torch.dtype, name: str = "matrix") -> dict[str, Tensor]:
    """One Linear's stored tensors (local names: weight_packed, weight_scale, weight_shape and, asymmetric only,
    weight_zero_point), packed by the library's PackedQuantizationCompressor for a model in `dtype`.

    The conversion to the library's convention is computed here because `Quantized` keeps the released GPTQ's
    unsigned grid: codes c in 0..2^b-1 with zero point z, while the library quantizes to the signed range
    [-2^(b-1), 2^(b-1)-1] as q = round(w / scale + zp) and dequantizes (q - zp) x scale. With q = c - 2^(b-1) and
    zp = z - 2^(b-1), q - zp = c - z: the same integers. A symmetric grid has z = 2^(b-1), so zp = 0 (the
    compressor drops it). The compressor re-derives q from the weights it is given: it gets (c - z) x the stored
    scale in fp32, which divided by that scale rounds back to c - z exactly (|c - z| <= 256)."""
    _check_storable(q, spec, name)
    steps, scale = _steps_and_scale(q, dtype)
    local: dict[str, Tensor] = {
        "weight": steps * scale,
        "weight_scale": q.scale.to(dtype),
        "weight_zero_point": (q.zero.round() - 2 ** (spec.bits - 1)).to(torch.int8),
    }
    return dict(PackedQuantizationCompressor.compress(local, spec.scheme()))


def _linears(model: nn.Module, quantized: dict[str, Quantized]) -> dict[str, nn.Linear]:
    """The quantized modules by name, each checked to be an nn.Linear of the matrix's shape."""
    out: dict[str, nn.Linear] = {}
    for name, q in quantized.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise TampError(f"cannot export '{name}': the model has no such module") from None
        if not isinstance(module, nn.Linear):
            raise TampError(f"cannot export '{name}': it is a {type(module).__name__}, only nn.Linear is quantized")
        if tuple(module.weight.shape) != tuple(q.codes.shape):
            raise TampError(f"cannot export '{name}': its weight is {tuple(module.weight.shape)}, the quantized "
                            f"matrix {tuple(q.codes.shape)}")
        out[name] = module
    return out


def ignore_list(model: nn.Module, quantized: dict[str, Quantized]) -> list[str]:
    """Every nn.Linear left unquantized, by its module name and by its checkpoint name.

    Both spellings, because the two loaders match different names: transformers (5.x) matches the ignore list
    against the loaded model's module names (`model.vision_tower...`), vLLM against the checkpoint's
    (`vision_tower...`, which save_pretrained writes for LLaVA / Qwen-VL families). The library's own list
    (QuantizationConfig.from_pretrained) holds only the checkpoint names, which transformers then fails to load
    for those families; its translation (`_map_to_checkpoint_names`) is reused here. A name in one spelling that
    is not a module in the other loader matches nothing there."""
    kept = [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and name not in quantized]
    names = list(dict.fromkeys(kept + _map_to_checkpoint_names(model, kept)))
    quantized_names = set(quantized) | set(_map_to_checkpoint_names(model, list(quantized)))
    clash = sorted(set(names) & quantized_names)
    if clash:  # a checkpoint name of one module spelling another, quantized module's name: the list would lie
        raise TampError(f"cannot export: the ignore list would also name the quantized {', '.join(clash[:3])}")
    return names


def quantization_config(model: nn.Module, quantized: dict[str, Quantized], spec: QuantSpec) -> QuantizationConfig:
    """The checkpoint's `quantization_config`: one group (`Linear`, the spec's grid, pack-quantized), the ignore list,
    status compressed."""
    return QuantizationConfig(config_groups={"group_0": spec.scheme()}, format=FORMAT,
                              quantization_status=QuantizationStatus.COMPRESSED,
                              ignore=ignore_list(model, quantized))


def quantized_state_dict(model: nn.Module, quantized: dict[str, Quantized], spec: QuantSpec) -> dict[str, Tensor]:
    """The model's state dict (module names) with each quantized Linear's `weight` replaced by its stored tensors;
    its bias and every other tensor as they are. The model is not modified."""
    linears = _linears(model, quantized)
    state = dict(model.state_dict())
    for name, q in quantized.items():
        dtype = linears[name].weight.dtype
        del state[f"{name}.weight"]
        for key, value in compressed_module(q, spec, dtype, name).items():
            state[f"{name}.{key}"] = value.contiguous()
    return state


def load_dequantized(directory: Path) -> None:
    """Mark a written checkpoint to be decompressed while it loads: `dequantize: true` in its quantization_config,
    which transformers' CompressedTensorsConfig reads (vLLM reads the keys it knows and ignores it). Without it,
    transformers 5.23 keeps the packed tensors until the first forward, where LLaVA-NeXT's generate() then fails
    (its encoded-media path meets the library's decompression hook); with it, any from_pretrained (lmms-eval's
    stock wrappers included) gets the dense weights, which is what evaluation on these devices runs anyway."""
    path = Path(directory) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["quantization_config"]["dequantize"] = True
    write_text_atomic(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_quantized(model: nn.Module, quantized: dict[str, Quantized], spec: QuantSpec, directory: Path) -> None:
    """Write the quantized checkpoint (weights, config.json with its quantization_config, generation config) into
    `directory`, an existing folder a caller publishes (an artifact's temp folder). save_pretrained writes the
    checkpoint's names (its reverse key mapping), ModelCompressor.update_config adds the quantization_config."""
    config = quantization_config(model, quantized, spec)
    model.save_pretrained(directory, state_dict=quantized_state_dict(model, quantized, spec))
    ModelCompressor(quantization_config=config).update_config(str(directory))


def export_quantized(model: nn.Module, quantized: dict[str, Quantized], spec: QuantSpec, out: str | Path,
                     processor: Any = None, extra_files: dict[str, Path] | None = None,
                     overwrite: bool = False) -> Path:
    """Write the quantized checkpoint to `out` atomically, with the processor (or tokenizer) if given and
    `extra_files` (name -> source: files from_pretrained needs that save_pretrained omits, Qwen2.5-Omni's speakers)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise TampError(f"output directory {out} exists and is not empty; pass overwrite or choose another folder")
    with atomic_dir(out) as tmp:
        write_quantized(model, quantized, spec, tmp)
        if processor is not None:
            processor.save_pretrained(tmp)
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, tmp / name)
    return out


def stored_tensor_bytes(folder: str | Path) -> dict[str, int]:
    """Bytes of each tensor stored in a checkpoint folder's safetensors files, read from their headers (the data
    offsets), by the checkpoint's key."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise TampError(f"{folder} holds no .safetensors file: is it a checkpoint folder?")
    sizes: dict[str, int] = {}
    for path in files:
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header: dict[str, Any] = json.loads(fh.read(length))
        for key, entry in header.items():
            if key != "__metadata__":
                start, end = entry["data_offsets"]
                sizes[key] = end - start
    return sizes


def stored_weight_bytes(folder: str | Path) -> int:
    """All tensor bytes a checkpoint folder stores (headers and other files not counted)."""
    return sum(stored_tensor_bytes(folder).values())


def export_problem(model: nn.Module, quantized: dict[str, Quantized], spec: QuantSpec) -> str | None:
    """Why these matrices cannot be written as a compressed-tensors checkpoint that the evaluation loads as it is
    (transformers' default load, which lmms-eval's wrappers use), or None. Besides what the library cannot store
    (act-order regrouping, a group size that does not divide a matrix), compressed-tensors 0.20.1 fails to build
    an asymmetric checkpoint's empty model on the default load path (a zero-point size mismatch), and decompresses
    through a hook Qwen2.5-Omni's thinker never calls."""
    if not spec.symmetric:
        return "an asymmetric grid (transformers' default load of it fails with compressed-tensors 0.20.1)"
    if type(model).__name__.startswith("Qwen2_5Omni"):
        return "Qwen2.5-Omni (compressed-tensors decompresses through a hook its thinker never calls)"
    for name, q in quantized.items():
        try:
            _check_storable(q, spec, name)
        except TampError as exc:
            return str(exc)
    return None
