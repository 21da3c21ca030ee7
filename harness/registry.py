"""Short model names -> HF id, tamp family, lmms-eval wrapper, default calibration and tasks.

A local directory or an HF id of a supported family also resolves: its family comes from the
config's model_type, its defaults from the first registry entry of that family.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError
from tamp.models.registry import HF_MODELS

SMOKE_TASKS: tuple[str, ...] = ("tamp_smoke_vqa", "tamp_smoke_mc")
# model_type -> (tamp family, registered lmms-eval wrapper id)
WRAPPERS: dict[str, tuple[str, str]] = {
    "llava": ("llava", "tamp_llava_hf"),
    "llava_next": ("llava-next", "tamp_llava_hf"),
    "llava_onevision": ("llava-onevision", "tamp_llava_hf"),
    "qwen2_vl": ("qwen2-vl", "tamp_qwen2_vl"),
    "qwen2_5_vl": ("qwen2.5-vl", "tamp_qwen2_5_vl"),
    "qwen2_audio": ("qwen2-audio", "tamp_qwen2_audio"),
    "qwen2_5_omni": ("qwen2.5-omni", "tamp_qwen2_5_omni"),
}
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

# the inputs each family's wrapper feeds its model (the README's Models table)
FAMILY_INPUTS: dict[str, tuple[str, ...]] = {
    "llava": ("image",),
    "llava-next": ("image", "video"),
    "llava-onevision": ("image", "video"),
    "qwen2-vl": ("image", "video"),
    "qwen2.5-vl": ("image", "video"),
    "qwen2-audio": ("audio",),
    "qwen2.5-omni": ("image", "video", "audio"),
}
# the input each task we know needs (lmms-eval's other tasks are not checked)
TASK_INPUT: dict[str, str] = {
    **{t: "image" for t in (*IMAGE_TASKS, "gqa", "mmbench_en_dev", *SMOKE_TASKS)},
    **{t: "video" for t in (*VIDEO_TASKS, *SMOKE_VIDEO)},
    **{t: "audio" for t in (*AUDIO_TASKS, *SMOKE_AUDIO)},
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


# HF ids come from tamp's registry, so `tamp prune --model NAME` and `harness run --model NAME` agree
MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("llava-next", HF_MODELS["llava-next"], "llava-next", "tamp_llava_hf", SHAREGPT4V,
                  (*IMAGE_TASKS, *VIDEO_TASKS)),
        ModelSpec("llava-1.5", HF_MODELS["llava-1.5"], "llava", "tamp_llava_hf", SHAREGPT4V,
                  ("textvqa_val", "vizwiz_vqa_val", "pope", "mme", "mmbench_en_dev_static", "scienceqa_img", "gqa")),
        ModelSpec("llava-onevision", HF_MODELS["llava-onevision"], "llava-onevision", "tamp_llava_hf",
                  SHAREGPT4V, (*IMAGE_TASKS, *VIDEO_TASKS)),
        ModelSpec("qwen2-vl", HF_MODELS["qwen2-vl"], "qwen2-vl", "tamp_qwen2_vl", SHAREGPT4V,
                  (*IMAGE_TASKS, *VIDEO_TASKS)),
        ModelSpec("qwen2.5-vl", HF_MODELS["qwen2.5-vl"], "qwen2.5-vl", "tamp_qwen2_5_vl", SHAREGPT4V,
                  (*IMAGE_TASKS, *VIDEO_TASKS)),
        ModelSpec("qwen2-audio", HF_MODELS["qwen2-audio"], "qwen2-audio", "tamp_qwen2_audio", None, AUDIO_TASKS),
        # audio-visual: the paper's AVInstruct AVQA-music JSON + media under $TAMP_DATA/avinstruct (fetch it yourself;
        # any LLaVA-format JSON whose samples name "video" / "audio" files works with --calib FILE.json:MEDIA_DIR)
        ModelSpec("qwen2.5-omni", HF_MODELS["qwen2.5-omni"], "qwen2.5-omni", "tamp_qwen2_5_omni", AVINSTRUCT,
                  (*AUDIO_TASKS, *VIDEO_TASKS)),
        # tiny random models built offline by tamp (multimodal families only: the wrappers need a processor)
        ModelSpec("tiny-llava", "tiny-llava", "llava", "tamp_llava_hf", "synthetic", SMOKE_TASKS, 4, 64),
        ModelSpec("tiny-llava-next", "tiny-llava-next", "llava-next", "tamp_llava_hf", "synthetic", SMOKE_TASKS, 4, 64),
        ModelSpec("tiny-qwen2-vl", "tiny-qwen2-vl", "qwen2-vl", "tamp_qwen2_vl", "synthetic", SMOKE_TASKS, 4, 64),
        ModelSpec("tiny-qwen2.5-vl", "tiny-qwen2.5-vl", "qwen2.5-vl", "tamp_qwen2_5_vl", "synthetic", SMOKE_TASKS, 4, 64),
        ModelSpec("tiny-qwen2-audio", "tiny-qwen2-audio", "qwen2-audio", "tamp_qwen2_audio", "synthetic", SMOKE_AUDIO,
                  4, 64),
        ModelSpec("tiny-llava-onevision", "tiny-llava-onevision", "llava-onevision", "tamp_llava_hf", "synthetic",
                  (*SMOKE_TASKS, *SMOKE_VIDEO), 4, 64),
        ModelSpec("tiny-qwen2.5-omni", "tiny-qwen2.5-omni", "qwen2.5-omni", "tamp_qwen2_5_omni", "synthetic",
                  (*SMOKE_AUDIO, SMOKE_VIDEO[0]), 4, 64),
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

    tamp's check of the files comes first, so a corrupt checkpoint or GGUF is called corrupt, not unknown.
    """
    from tamp.models.loading import model_problem
    from tamp.models.registry import GGUF_MODELS, registry_names

    if name in MODELS:
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
    if model_type not in WRAPPERS:
        supported = ", ".join(sorted(WRAPPERS))
        raise HarnessError(f"model '{name}' has model_type '{model_type}', which has no lmms-eval wrapper here; "
                           f"supported model types: {supported}")
    family, wrapper = WRAPPERS[model_type]
    base = next((s for s in MODELS.values() if s.family == family and not s.name.startswith("tiny-")), None)
    label = path.resolve().name if path.is_dir() else name.replace("/", "__")
    return ModelSpec(label, str(path.resolve()) if path.is_dir() else name, family, wrapper,
                     base.calib if base else None, base.tasks if base else SMOKE_TASKS)


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
    takes = FAMILY_INPUTS.get(spec.family, ())
    return [f"task '{task}' needs {TASK_INPUT[task]} input, which {spec.name} ({spec.family}) cannot take (it takes "
            f"{', '.join(takes)}); its default tasks: {', '.join(spec.tasks)}"
            for task in tasks if task in TASK_INPUT and TASK_INPUT[task] not in takes]
