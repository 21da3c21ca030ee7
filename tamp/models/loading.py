"""Load a model and its processor from a registry name, an HF id, a local directory or a .gguf file."""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tamp.atomic_write import apply_umask, disk_full_names, make_temp_dir
from tamp.errors import TampError
from tamp.families.base import Family
from tamp.families.registry import family_of, tiny_families, trained_families
from tamp.models import shipped
from tamp.models.sources import GGUF_MODELS, HF_MODELS, TINY_PREFIX, TRAINED_PREFIX, tiny_folder
from tamp.paths import hf_home_problem, tamp_cache_problem

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoadedModel:
    """A model ready for pruning plus what is needed to save it as a self-contained artifact."""

    model: torch.nn.Module
    processor: Any  # a multimodal processor, or the tokenizer for text-only models
    tokenizer: Any
    model_id: str  # what the user asked for, resolved (HF id, path, or gguf:NAME)
    source: str  # where the weights were read from
    revision: str | None
    from_gguf: bool


def resolve_dtype(dtype: str) -> torch.dtype | str:
    if dtype == "auto":
        return "auto"
    if dtype not in DTYPES:
        raise TampError(f"unknown dtype '{dtype}'; choose auto, float32, bfloat16 or float16")
    return DTYPES[dtype]


def _is_multimodal(config: Any) -> bool:
    return hasattr(config, "vision_config") or hasattr(config, "audio_config") or hasattr(config, "thinker_config")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def weights_problem(directory: Path) -> str | None:
    """Why the weight files of a checkpoint folder cannot be loaded (missing shard, truncated or corrupt
    safetensors), None when every one opens; safetensors checks each header against the file's length."""
    from safetensors import SafetensorError, safe_open

    directory = Path(directory)
    for index in sorted(directory.glob("*.safetensors.index.json")):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            return f"{index} is unreadable ({_first_line(exc)})"
        missing = sorted(s for s in shards if not (directory / s).is_file())
        if missing:
            return f"{directory} lacks {', '.join(missing)}, listed in {index.name}"
    files = sorted(directory.glob("*.safetensors"))
    if not files and not any(directory.glob("*.bin")):
        return f"{directory} holds no weights (*.safetensors or *.bin)"
    for file in files:
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as exc:
            return f"{file} is truncated or corrupt ({_first_line(exc)})"
    return None


def checkpoint_problem(directory: Path) -> str | None:
    """Why a local checkpoint folder cannot be loaded, checked in a second before minutes of loading."""
    directory = Path(directory)
    config = directory / "config.json"
    if not config.is_file():
        return f"{directory} has no config.json (not a transformers checkpoint folder)"
    try:
        parsed = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"{config} is not valid JSON ({_first_line(exc)})"
    if not isinstance(parsed, dict):
        return f"{config} is not a transformers config (a JSON object)"
    return weights_problem(directory)


def gguf_problem(path: Path) -> str | None:
    """Why `path` is not a readable GGUF file (checked with the gguf library's own reader), None when it is."""
    path = Path(path)
    if not path.is_file():
        return f"GGUF file not found: {path}"
    from gguf import GGUFReader

    try:
        GGUFReader(path)
    except Exception as exc:  # the reader fails in many ways on a damaged file (bad magic, short arrays, ...)
        return f"{path} is not a valid GGUF file ({_first_line(exc)}): download it again"
    return None


def offline() -> bool:
    """Hugging Face offline mode (HF_HUB_OFFLINE): nothing missing from the local cache can be fetched."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hf_cache_problem(model_id: str, revision: str | None, why_offline: str) -> str | None:
    """Why an HF id cannot be loaded without the network (not in the local cache, or a damaged download)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(model_id, "config.json", revision=revision)
    except ValueError:  # not a valid repo id
        config = None
    if not isinstance(config, str):
        return (f"model {model_id} is not in the local Hugging Face cache and {why_offline}: "
                f"`hf download {model_id}` first")
    problem = weights_problem(Path(config).parent)
    return None if problem is None else f"{problem}; fetch it again with `hf download {model_id}`"


def model_problem(name: str, revision: str | None = None) -> str | None:
    """Why `name` cannot be loaded, found without loading it (None: go ahead; a download may still be needed)."""
    if name in GGUF_MODELS:
        from tamp.models.gguf import find_smollm2_gguf

        try:
            return gguf_problem(find_smollm2_gguf())
        except FileNotFoundError as exc:
            return str(exc)
    if name.endswith(".gguf"):
        return gguf_problem(Path(name))
    if name.startswith(TRAINED_PREFIX):
        family = name[len(TRAINED_PREFIX):]
        if family not in trained_families():
            return f"no trained tiny model of family '{family}'; trained families: {', '.join(trained_families())}"
        return shipped.problem(family)  # every shipped file against its manifest (a few milliseconds)
    if name.startswith(TINY_PREFIX):
        family = name[len(TINY_PREFIX):]
        if family not in tiny_families():
            return f"unknown tiny family '{family}'; choose one of: {', '.join(tiny_families())}"
        return None if tiny_entry_problem(tiny_folder(family)) is None else tamp_cache_problem()  # built there
    path = Path(name)
    if name not in HF_MODELS and path.exists():
        if not path.is_dir():
            return f"{name} is a file; give a checkpoint folder, a registry name, an HF id or a .gguf file"
        problem = checkpoint_problem(path)
        return None if problem is None else f"{problem}: copy, download or build the checkpoint again"
    if name not in HF_MODELS and name.count("/") != 1:
        return f"unknown model '{name}': give a registry name, an HF id (org/name), a local directory or a .gguf file"
    if hf_home_problem(datasets=False) is not None:
        return hf_home_problem(datasets=False)
    if offline():
        return hf_cache_problem(HF_MODELS.get(name, name), revision, "offline mode is set (HF_HUB_OFFLINE)")
    return None


def load_model(name: str, dtype: str = "auto", revision: str | None = None) -> LoadedModel:
    """Resolve `name` and load it on the CPU (the engine moves layers to the device itself)."""
    from transformers import AutoConfig

    torch_dtype = resolve_dtype(dtype)
    problem = model_problem(name, revision)
    if problem is not None:
        raise TampError(problem)
    if name in GGUF_MODELS or name.endswith(".gguf"):
        return _load_gguf(name, torch_dtype)
    model_id = name
    if name.startswith(TRAINED_PREFIX):
        model_id = str(_shipped_trained(name[len(TRAINED_PREFIX):]))
    elif name.startswith(TINY_PREFIX):
        model_id = str(_ensure_tiny(name[len(TINY_PREFIX):]))
    elif name in HF_MODELS:
        model_id = HF_MODELS[name]
    try:
        config = AutoConfig.from_pretrained(model_id, revision=revision)
    except (OSError, ValueError) as exc:
        if Path(model_id).is_dir():
            raise TampError(f"cannot read the config of {model_id} ({_first_line(exc)}): is it a checkpoint of a "
                            "supported family?") from None
        raise TampError(
            f"cannot load '{model_id}' ({_first_line(exc)}); download it first with "
            f"`hf download {model_id}` on a machine with internet, or pass a local directory"
        ) from None
    multimodal = _is_multimodal(config)
    kwargs: dict[str, Any] = {"revision": revision, "dtype": torch_dtype}
    family = family_of(config)
    if multimodal:
        from tamp.processors import load_processor

        model = _from_pretrained(_model_class(family, "AutoModelForMultimodalLM"), model_id, kwargs)
        processor = load_processor(model_id, revision=revision)
        tokenizer = getattr(processor, "tokenizer", processor)
    else:
        from transformers import AutoTokenizer

        model = _from_pretrained(_model_class(family, "AutoModelForCausalLM"), model_id, kwargs)
        tokenizer = AutoTokenizer.from_pretrained(model_id, revision=revision)
        processor = tokenizer
    model.eval()
    return LoadedModel(model, processor, tokenizer, model_id, model_id, revision, False)


def _model_class(family: Family | None, auto_class: str) -> Any:
    """The class that loads a checkpoint: its family's (what the Auto mapping picks for the built-in ones), else the
    Auto class (the multimodal-LM mapping is the image-text-to-text one plus audio LMs and Qwen2.5-Omni)."""
    import transformers

    return getattr(transformers, family.model_class if family is not None else auto_class)


def _from_pretrained(model_cls: Any, model_id: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    try:
        return model_cls.from_pretrained(model_id, **kwargs)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            from transformers import AutoModel

            model = AutoModel.from_pretrained(model_id, **kwargs)
            return model
        raise


def tiny_entry_problem(folder: Path) -> str | None:
    """Why a cache entry of a built model (a tiny model, the tests' trained build) is not a finished one, None when
    it is. config.json alone does not say so: a copy cut short, a full disk or a crash of an older writer can leave
    it beside truncated weights, so every weight file must open too."""
    if not (Path(folder) / "config.json").is_file():
        return f"{folder} is not built yet"
    return checkpoint_problem(Path(folder))


def reusable_build(folder: Path, what: str) -> bool:
    """Whether a cache entry of a built model (`tiny_entry_problem`) can be used as it is. A damaged one (config.json
    beside truncated weights) is announced with one warning line, and the caller builds it again."""
    problem = tiny_entry_problem(folder)
    if problem is not None and (Path(folder) / "config.json").is_file():
        print(f"warning: the cached {what} {folder} is damaged ({problem}); building it again", file=sys.stderr,
              flush=True)
    return problem is None


def _ensure_tiny(family: str) -> Path:
    """The tiny model of a known family (model_problem checks the name), built on first use; a damaged cache entry
    (truncated weights) is built again, with a note saying so.

    The builders are test scaffolding (tamp.testing), imported only here, when a tiny model is missing from the
    cache and must be built."""
    from tamp.testing.tiny import build_tiny

    out = tiny_folder(family)
    if not reusable_build(out, "tiny model"):
        # built beside the cache entry and renamed into place: an interrupted build leaves no half model behind
        tmp = make_temp_dir(out)  # tamp.atomic_write: umask permissions, a killed build's temp removed
        try:
            with disk_full_names(out, "TAMP_CACHE, where tiny models are built"):  # the temp goes below
                build_tiny(family, tmp, seed=0)
            apply_umask(tmp)  # safetensors writes its weights 0600
            shutil.rmtree(out, ignore_errors=True)  # a leftover without config.json, or a damaged entry
            try:
                os.replace(tmp, out)
            except OSError:
                if tiny_entry_problem(out) is not None:  # not another process's finished build
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _shipped_trained(family: str) -> Path:
    """The trained tiny model of a trained family: the build shipped in the package (tamp/testing/trained/), whose
    files model_problem has checked against their manifest. Never trained here: training's last bits depend on
    the CPU, the shipped weights do not (`tamp build-tiny --trained` trains the recipe anew)."""
    return shipped.folder(family)


def _load_gguf(name: str, torch_dtype: torch.dtype | str) -> LoadedModel:
    from tamp.models.gguf import find_smollm2_gguf, load_gguf

    if name in GGUF_MODELS:  # found and read by model_problem already
        path = find_smollm2_gguf()
        model_id = f"gguf:{name}"
    else:
        path = Path(name)
        model_id = str(path.resolve())
    dtype = torch.float32 if torch_dtype == "auto" else torch_dtype
    model, tokenizer = load_gguf(path, dtype=dtype)
    return LoadedModel(model, tokenizer, tokenizer, model_id, str(path), None, True)
