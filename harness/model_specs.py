"""Short model names -> HF id, tamp family, lmms-eval wrapper, default calibration and tasks.

Everything about a family (names, model types, HF ids, inputs, its lmms-eval wrapper id, default calibration and
tasks) is its own file's, ``tamp.families``; this module turns the registered families into the model specs the
harness runs. A local directory or an HF id of a supported family also resolves: its family comes from the config's
model_type, its defaults from that family's ``Evaluation``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.benchmarks import registered_tasks
from harness.errors import HarnessError
from tamp.families.base import Evaluation
from tamp.families.defaults import (
    SMOKE_TASKS,
)
from tamp.families.registry import evaluated_families, families, family_of, tiny_families, trained_families
from tamp.models.sources import GGUF_MODELS, TINY_PREFIX, TRAINED_PREFIX, source_names

# tiny random models are pruned on a few short synthetic samples: they only prove the path runs
TINY_CALIB, TINY_NSAMPLES, TINY_SEQLEN = "synthetic", 4, 64
# the held-out picture questions (tasks/tamp_heldout) that the trained tiny model never saw
HELDOUT_TASKS: tuple[str, ...] = ("tamp_heldout_vqa", "tamp_heldout_mc")
# trained tiny models are pruned on their own domain: generated picture conversations (tamp.calibration.pictures)
TRAINED_CALIB, TRAINED_NSAMPLES, TRAINED_SEQLEN = "picture-qa", 16, 512

def task_inputs() -> dict[str, str]:
    """The input each registered task needs (the task registry's rows; lmms-eval's other tasks are not checked)."""
    return {name: b.input for name, b in registered_tasks().items() if b.input is not None}


# tamp family -> its evaluation, for the families lmms-eval can run (multimodal only: the wrappers need a
# processor). The order is the order `harness models` lists the HF models in.
EVALUATIONS: dict[str, Evaluation] = {f.name: f.evaluation for f in evaluated_families()}  # type: ignore[misc]


@dataclass(frozen=True)
class ModelSpec:
    """Everything the harness needs to know about one model it can prune and evaluate."""

    name: str  # the name run records are filed under
    source: str  # what tamp loads: an HF id, a local directory or tiny-<family>
    family: str  # tamp adapter family
    wrapper: str  # lmms-eval model id (registered through our entry point)
    calib: str | None  # default --calib (None: no default, --calib is required)
    tasks: tuple[str, ...] = field(default=SMOKE_TASKS)
    nsamples: int = 128
    seqlen: int = 2048

    @property
    def is_local(self) -> bool:
        return Path(self.source).exists()


def _hf_spec(family: str, evaluation: Evaluation) -> ModelSpec:
    """The family's HF model under tamp's short name, so `tamp prune --model NAME` and `harness run --model NAME`
    agree."""
    row = families()[family]
    assert row.registry_name is not None and row.hf_id is not None
    return ModelSpec(row.registry_name, row.hf_id, family, evaluation.wrapper, evaluation.calib, evaluation.tasks)


def _tiny_spec(family: str, evaluation: Evaluation) -> ModelSpec:
    """The family's tiny random model, built offline by tamp."""
    name = TINY_PREFIX + family
    return ModelSpec(name, name, family, evaluation.wrapper, TINY_CALIB, evaluation.tiny_tasks, TINY_NSAMPLES,
                     TINY_SEQLEN)


def _trained_spec(family: str, evaluation: Evaluation) -> ModelSpec:
    """The family's trained tiny model (shipped with tamp, tamp/testing/trained/): its scores on the held-out tasks
    mean something, so sweeps on it show what pruning does."""
    name = TRAINED_PREFIX + family
    return ModelSpec(name, name, family, evaluation.wrapper, TRAINED_CALIB, HELDOUT_TASKS, TRAINED_NSAMPLES,
                     TRAINED_SEQLEN)


# the HF models, then the tiny ones (in tamp's tiny-family order), then the trained tiny ones
MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        *(_hf_spec(family, evaluation) for family, evaluation in EVALUATIONS.items()
          if families()[family].registry_name and families()[family].hf_id),
        *(_tiny_spec(family, EVALUATIONS[family]) for family in tiny_families() if family in EVALUATIONS),
        *(_trained_spec(family, EVALUATIONS[family]) for family in trained_families()),
    )
}
def expand_calib(spec: str | None) -> str | None:
    """Fill $TAMP_DATA (default ./data) into a default calibration spec."""
    if spec is None:
        return None
    return spec.replace("$TAMP_DATA", os.environ.get("TAMP_DATA", "data"))


def _text_only(name: str) -> HarnessError:
    return HarnessError(f"{name} is a text-only LM: `harness run` evaluates multimodal models through lmms-eval "
                        f"(`harness models` lists them); prune it with `tamp prune --model {name}`")


def resolve_model(name: str) -> ModelSpec:
    """A registry name, a local checkpoint directory or an HF id of a supported family -> ModelSpec.

    tamp's check of the files comes first, so a corrupt checkpoint or GGUF is called corrupt, not unknown (and a
    damaged shipped trained tiny model damaged, before anything is keyed or pruned).
    """
    from tamp.models.loading import model_problem

    if name in MODELS:
        problem = model_problem(name) if name.startswith(TRAINED_PREFIX) else None
        if problem is not None:
            raise HarnessError(problem)
        return MODELS[name]
    path = Path(name)
    if name in GGUF_MODELS or name.endswith(".gguf") or path.exists():
        problem = model_problem(name)
        if problem is not None:
            raise HarnessError(problem)
    if name in source_names() or name.endswith(".gguf"):  # smollm2, tiny-llama, any GGUF: text LMs
        raise _text_only(name)
    looks_like_hf_id = re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None and not path.exists()
    if not path.is_dir() and not looks_like_hf_id:
        raise HarnessError(f"unknown model '{name}': give a name from `harness models`, a local checkpoint "
                           "directory or an HF id (org/name)")
    config = _config(name)
    row = family_of(config)
    if row is None or row.name not in EVALUATIONS:
        supported = ", ".join(sorted({f.model_type for f in evaluated_families()}))
        raise HarnessError(f"model '{name}' has model_type '{config.model_type}', which has no lmms-eval wrapper "
                           f"here; supported model types: {supported}")
    family = row.name
    evaluation = EVALUATIONS[family]
    label = path.resolve().name if path.is_dir() else name.replace("/", "__")
    return ModelSpec(label, str(path.resolve()) if path.is_dir() else name, family, evaluation.wrapper,
                     evaluation.calib, evaluation.tasks)


def _config(name: str) -> Any:
    """The transformers config of a checkpoint folder or HF id (its model_type, and the family it may claim)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if Path(name).is_dir():  # its config.json parses (tamp checked it): an unknown model_type or the like
            raise HarnessError(f"cannot read the config of {name} ({first}): is it a checkpoint of a supported "
                               "family?") from None
        raise HarnessError(f"cannot read the config of '{name}' ({first}); download it first with "
                           f"`hf download {name}`") from None


def input_problems(spec: ModelSpec, tasks: list[str]) -> list[str]:
    """Tasks whose input (image, video, audio) the model cannot take: refused before pruning, not mid-evaluation."""
    takes = families()[spec.family].inputs if spec.family in families() else ()
    needs = task_inputs()
    return [f"task '{task}' needs {needs[task]} input, which {spec.name} ({spec.family}) cannot take (it takes "
            f"{', '.join(takes)}); its default tasks: {', '.join(spec.tasks)}"
            for task in tasks if task in needs and needs[task] not in takes]
