"""Short model names -> HF id, tamp family, lmms-eval wrapper, default calibration and tasks.

The families themselves (names, model types, HF ids, inputs) are tamp's table, ``tamp.models.families``; this
module adds only what is the harness's own per family: the lmms-eval wrapper that evaluates it and its default
calibration and tasks (``EVALUATIONS``). A local directory or an HF id of a supported family also resolves: its
family comes from the config's model_type, its defaults from that family's row here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError
from tamp.models.families import BY_NAME, FAMILIES, TINY_FAMILIES, TRAINED_FAMILIES
from tamp.models.registry import GGUF_MODELS, TINY_PREFIX, TRAINED_PREFIX, registry_names

SMOKE_TASKS: tuple[str, ...] = ("tamp_smoke_vqa", "tamp_smoke_mc")
# The paper's calibration: 128 conversations of the ShareGPT4V subset of LLaVA-NeXT-Data.
# $TAMP_DATA (default ./data) holds it; pass --calib to use anything else.
SHAREGPT4V = "$TAMP_DATA/sharegpt4v/llava_next_sharegpt4v.json:$TAMP_DATA/sharegpt4v/images"
# The paper's audio-visual calibration: AVInstruct's AVQA-music split (samples name a "video" and an "audio" file).
AVINSTRUCT = "$TAMP_DATA/avinstruct/avinstruct_avqa_music.json:$TAMP_DATA/avinstruct/media"
IMAGE_TASKS = ("textvqa_val", "vizwiz_vqa_val", "pope", "mme", "mmbench_en_dev_static", "scienceqa_img", "muirbench")
VIDEO_TASKS = ("mvbench", "videomme", "nextqa_mc_test", "egoschema_subset")
AUDIO_TASKS = ("clotho_aqa_test", "vocalsound_test")
# offline audio / video smoke tasks (tasks/tamp_smoke_av) for the tiny audio and video families
SMOKE_AUDIO = ("tamp_smoke_audio",)
SMOKE_VIDEO = ("tamp_smoke_video", "tamp_smoke_video_mc")
# tiny random models are pruned on a few short synthetic samples: they only prove the path runs
TINY_CALIB, TINY_NSAMPLES, TINY_SEQLEN = "synthetic", 4, 64
# the held-out picture questions (tasks/tamp_heldout) that the trained tiny model never saw
HELDOUT_TASKS: tuple[str, ...] = ("tamp_heldout_vqa", "tamp_heldout_mc")
# trained tiny models are pruned on their own domain: generated picture conversations (tamp.calibration.pictures)
TRAINED_CALIB, TRAINED_NSAMPLES, TRAINED_SEQLEN = "picture-qa", 16, 512

# the input each task we know needs (lmms-eval's other tasks are not checked)
TASK_INPUT: dict[str, str] = {
    **{t: "image" for t in (*IMAGE_TASKS, "gqa", "mmbench_en_dev", *SMOKE_TASKS, *HELDOUT_TASKS)},
    **{t: "video" for t in (*VIDEO_TASKS, *SMOKE_VIDEO)},
    **{t: "audio" for t in (*AUDIO_TASKS, *SMOKE_AUDIO)},
}


@dataclass(frozen=True)
class Evaluation:
    """What the harness adds to one family of tamp's table: how lmms-eval runs it and on what by default."""

    wrapper: str  # lmms-eval model id (registered through our entry point: harness.wrappers.WRAPPER_CLASSES)
    calib: str | None  # default --calib of the family's HF model (None: no default, --calib is required)
    tasks: tuple[str, ...]  # default tasks of the family's HF model (and of local / HF-id checkpoints of it)
    tiny_tasks: tuple[str, ...]  # default tasks of tiny-<family>: offline smoke tasks of the inputs it takes


# tamp family -> its evaluation, for the families lmms-eval can run (multimodal only: the wrappers need a
# processor). The order is the order `harness models` lists the HF models in.
EVALUATIONS: dict[str, Evaluation] = {
    "llava-next": Evaluation("tamp_llava_hf", SHAREGPT4V, (*IMAGE_TASKS, *VIDEO_TASKS), SMOKE_TASKS),
    "llava": Evaluation("tamp_llava_hf", SHAREGPT4V,
                        ("textvqa_val", "vizwiz_vqa_val", "pope", "mme", "mmbench_en_dev_static", "scienceqa_img", "gqa"),
                        SMOKE_TASKS),
    "llava-onevision": Evaluation("tamp_llava_hf", SHAREGPT4V, (*IMAGE_TASKS, *VIDEO_TASKS),
                                  (*SMOKE_TASKS, *SMOKE_VIDEO)),
    "qwen2-vl": Evaluation("tamp_qwen2_vl", SHAREGPT4V, (*IMAGE_TASKS, *VIDEO_TASKS), SMOKE_TASKS),
    "qwen2.5-vl": Evaluation("tamp_qwen2_5_vl", SHAREGPT4V, (*IMAGE_TASKS, *VIDEO_TASKS), SMOKE_TASKS),
    "qwen2-audio": Evaluation("tamp_qwen2_audio", None, AUDIO_TASKS, SMOKE_AUDIO),
    # audio-visual: the paper's AVInstruct AVQA-music JSON + media under $TAMP_DATA/avinstruct (fetch it yourself;
    # any LLaVA-format JSON whose samples name "video" / "audio" files works with --calib FILE.json:MEDIA_DIR)
    "qwen2.5-omni": Evaluation("tamp_qwen2_5_omni", AVINSTRUCT, (*AUDIO_TASKS, *VIDEO_TASKS),
                               (*SMOKE_AUDIO, SMOKE_VIDEO[0])),
}


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
    row = BY_NAME[family]
    if row.registry_name is None or row.hf_id is None:
        raise RuntimeError(f"family {family} has an evaluation but no default HF model in tamp.models.families")
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
        *(_hf_spec(family, evaluation) for family, evaluation in EVALUATIONS.items()),
        *(_tiny_spec(family, EVALUATIONS[family]) for family in TINY_FAMILIES if family in EVALUATIONS),
        *(_trained_spec(family, EVALUATIONS[family]) for family in TRAINED_FAMILIES),
    )
}
# model_type -> family, for the families lmms-eval can run (a local directory or an HF id resolves through it)
EVALUATED_TYPES: dict[str, str] = {f.model_type: f.name for f in FAMILIES if f.name in EVALUATIONS}


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
    if name in registry_names() or name.endswith(".gguf"):  # smollm2, tiny-llama, any GGUF: text LMs
        raise _text_only(name)
    looks_like_hf_id = re.fullmatch(r"[\w.-]+/[\w.-]+", name) is not None and not path.exists()
    if not path.is_dir() and not looks_like_hf_id:
        raise HarnessError(f"unknown model '{name}': give a name from `harness models`, a local checkpoint "
                           "directory or an HF id (org/name)")
    model_type = _model_type(name)
    if model_type not in EVALUATED_TYPES:
        supported = ", ".join(sorted(EVALUATED_TYPES))
        raise HarnessError(f"model '{name}' has model_type '{model_type}', which has no lmms-eval wrapper here; "
                           f"supported model types: {supported}")
    family = EVALUATED_TYPES[model_type]
    evaluation = EVALUATIONS[family]
    label = path.resolve().name if path.is_dir() else name.replace("/", "__")
    return ModelSpec(label, str(path.resolve()) if path.is_dir() else name, family, evaluation.wrapper,
                     evaluation.calib, evaluation.tasks)


def _model_type(name: str) -> str:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name).model_type
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if Path(name).is_dir():  # its config.json parses (tamp checked it): an unknown model_type or the like
            raise HarnessError(f"cannot read the config of {name} ({first}): is it a checkpoint of a supported "
                               "family?") from None
        raise HarnessError(f"cannot read the config of '{name}' ({first}); download it first with "
                           f"`hf download {name}`") from None


def input_problems(spec: ModelSpec, tasks: list[str]) -> list[str]:
    """Tasks whose input (image, video, audio) the model cannot take: refused before pruning, not mid-evaluation."""
    takes = BY_NAME[spec.family].inputs if spec.family in BY_NAME else ()
    return [f"task '{task}' needs {TASK_INPUT[task]} input, which {spec.name} ({spec.family}) cannot take (it takes "
            f"{', '.join(takes)}); its default tasks: {', '.join(spec.tasks)}"
            for task in tasks if task in TASK_INPUT and TASK_INPUT[task] not in takes]
