"""The model families tamp knows by name: one row per family, read by everyone who needs a family fact.

Before this table the same facts lived in four places (the registry's short names, the adapters' model_type map,
the harness's model_type and input maps, the tiny builders' family list) and a new family meant editing all of
them in step. Here a family is one ``Family`` row; the modules that need a view of it (``tamp.models.registry``,
``tamp.models.adapters``, ``harness.registry``) derive it from ``FAMILIES``. The harness adds only what is its own
(the lmms-eval wrapper and default tasks per family), and the tiny builders (``tamp.testing.tiny``) only how to
build each family. This module imports nothing heavy, so listing names never loads transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

# Qwen2.5-Omni's talker speaker file: from_pretrained insists on it even with the talker disabled, and
# save_pretrained does not write it, so artifacts copy it and the tiny builder writes a placeholder.
OMNI_SPEAKER_FILE = "spk_dict.pt"


@dataclass(frozen=True)
class Family:
    """One model family: its names, its transformers model_type, its inputs and where its parts are."""

    name: str  # tamp's family name: the adapter's family, `tiny-<name>`, the harness's family
    model_type: str  # the transformers config's model_type
    inputs: tuple[str, ...] = ()  # media the models take besides text (what the harness feeds); () = text-only LM
    registry_name: str | None = None  # tamp's short name for the family's default checkpoint
    hf_id: str | None = None  # that checkpoint's Hugging Face id
    # the submodule to call with a processor batch ("" = the model itself). Qwen2.5-Omni's top-level model has no
    # forward (only generate, which also drives the talker); its thinker is the multimodal LM.
    forward_path: str = ""
    extra_files: tuple[str, ...] = ()  # files beside the weights that from_pretrained needs, save_pretrained omits

    @property
    def multimodal(self) -> bool:
        return bool(self.inputs)


# LLaVA families, then Qwen ones, then the text-only LMs that have tiny builds. This order is the one the adapters'
# "unsupported model type" message lists model types in.
FAMILIES: tuple[Family, ...] = (
    Family("llava", "llava", ("image",), "llava-1.5", "llava-hf/llava-1.5-7b-hf"),
    # the paper's LLaVA-NeXT is the llava-hf conversion of llama3-llava-next-8b
    Family("llava-next", "llava_next", ("image", "video"), "llava-next", "llava-hf/llama3-llava-next-8b-hf"),
    Family("llava-onevision", "llava_onevision", ("image", "video"), "llava-onevision",
           "llava-hf/llava-onevision-qwen2-7b-ov-hf"),
    Family("qwen2-vl", "qwen2_vl", ("image", "video"), "qwen2-vl", "Qwen/Qwen2-VL-7B-Instruct"),
    Family("qwen2.5-vl", "qwen2_5_vl", ("image", "video"), "qwen2.5-vl", "Qwen/Qwen2.5-VL-7B-Instruct"),
    Family("qwen2-audio", "qwen2_audio", ("audio",), "qwen2-audio", "Qwen/Qwen2-Audio-7B-Instruct"),
    # the transformers-native audio-visual model nearest to the paper's VideoLLaMA2-AV (not transformers-native)
    Family("qwen2.5-omni", "qwen2_5_omni", ("image", "video", "audio"), "qwen2.5-omni", "Qwen/Qwen2.5-Omni-7B",
           forward_path="thinker", extra_files=(OMNI_SPEAKER_FILE,)),
    Family("llama", "llama"),
    Family("qwen2", "qwen2"),
)

# Families with a tiny random build (`tiny-<name>`, tamp.testing.tiny), in the order they were added: messages,
# `tamp build-tiny` errors, `harness models` and the tests list them in this order.
TINY_FAMILIES: tuple[str, ...] = (
    "llava", "llava-next", "qwen2-vl", "qwen2.5-vl", "llama", "qwen2", "qwen2-audio", "llava-onevision", "qwen2.5-omni",
)
# Families with a trained tiny build (`tiny-trained-<name>`, tamp.testing.tiny_training): a few million parameters
# trained on generated picture questions, so pruning it changes scores (a random tiny model scores 0 everywhere).
TRAINED_FAMILIES: tuple[str, ...] = ("llava-next",)

BY_NAME: dict[str, Family] = {f.name: f for f in FAMILIES}

if set(TINY_FAMILIES) - set(BY_NAME):
    raise RuntimeError(f"tiny families without a family row: {sorted(set(TINY_FAMILIES) - set(BY_NAME))}")
