"""What a model family is: the ``Family`` row one family module defines, and its optional parts.

Classes and builders are named by string (``"LlavaNextForConditionalGeneration"``, ``"module:function"``) and
imported only where they are used, so reading the family table never loads transformers or the test scaffolding
(``tamp.testing``), whose builders run only when a tiny model is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Where the language model's decoder stack and the vision tower's blocks may sit, across transformers versions
# (first that exists wins); a family narrows these to its own.
LANGUAGE_PATHS: tuple[str, ...] = ("model.language_model", "model", "language_model.model",
                                   "thinker.model.language_model")
VISION_PATHS: tuple[str, ...] = (
    "model.vision_tower.encoder.layers",  # CLIP / SigLIP vision transformer (LLaVA family)
    "model.vision_tower.vision_model.encoder.layers",
    "model.visual.blocks",  # Qwen2-VL / Qwen2.5-VL
    "vision_tower.vision_model.encoder.layers",
    "visual.blocks",
    "thinker.model.visual.blocks",  # Qwen2.5-Omni
)
# Where a checkpoint's config.json holds its language model's config (the one whose num_hidden_layers is the decoder
# depth): dotted keys, "" for the top level, first that holds it wins. A VLM nests it under text_config (older
# Qwen-VL checkpoints kept it at the top level); a text-only LM and Qwen2.5-Omni's thinker narrow this.
TEXT_CONFIG_PATHS: tuple[str, ...] = ("text_config", "")
# the order plugins list in after the built-ins unless they ask otherwise
PLUGIN_ORDER = 1000


@dataclass(frozen=True)
class TinyBuild:
    """How `tamp build-tiny` / `tiny-<family>` builds the family's tiny random checkpoint (tests, demos)."""

    builder: str  # "module:function" taking the tokenizer, returning (model, processor or None); imported lazily
    tokenizer: str  # the tiny tokenizer recipe it uses (tamp.testing.tiny_tokenizers: a built-in family name)
    order: int  # position in the tiny families' listing (messages, `harness models`, tests)
    trained: bool = False  # also a trained tiny build shipped in the package (`tiny-trained-<family>`)
    # bumped when the checkpoint it builds changes (weights, tokenizer, processor): keys of tiny-<family> artifacts
    # cover it, as a real model's keys cover its commit
    version: int = 1


@dataclass(frozen=True)
class Evaluation:
    """How lmms-eval runs the family, and on what by default (the harness's part of a family)."""

    wrapper: str  # lmms-eval model id (harness.wrappers.WRAPPER_CLASSES)
    calib: str | None  # default --calib of the family's HF model (None: no default, --calib is required)
    tasks: tuple[str, ...]  # default tasks of the family's HF model (and of local / HF-id checkpoints of it)
    tiny_tasks: tuple[str, ...]  # default tasks of tiny-<family>: offline smoke tasks of the inputs it takes
    order: int  # position of its HF model in `harness models`


@dataclass(frozen=True)
class VideoFallback:
    """A processor whose stock video part needs torchvision: built with tamp.processors' numpy stand-in instead."""

    processor_class: str  # the stock transformers processor class name
    video_processor: str  # the stand-in's class name in tamp.processors


@dataclass(frozen=True)
class Family:
    """One model family: names, transformers classes, where its parts are, how it is built small and evaluated."""

    name: str  # tamp's family name: the adapter's family, `tiny-<name>`, the harness's family
    model_type: str  # the transformers config's model_type (a checkpoint folder's family is found by it)
    model_class: str  # the transformers class that loads a checkpoint (what the Auto mapping picks for it)
    order: int  # position in the family table (the "unsupported model type" message lists in this order)
    inputs: tuple[str, ...] = ()  # media the models take besides text (what the harness feeds); () = text-only LM
    registry_name: str | None = None  # tamp's short name for the family's default checkpoint
    hf_id: str | None = None  # that checkpoint's Hugging Face id
    text_model_paths: tuple[str, ...] = LANGUAGE_PATHS  # the module holding `.layers` of the language model
    # where config.json holds the language model's config (its num_hidden_layers: the depth read before loading)
    text_config_paths: tuple[str, ...] = TEXT_CONFIG_PATHS
    vision_layer_paths: tuple[str, ...] = VISION_PATHS  # the vision tower's block list (--prune-vision)
    # configs holding the media token ids ("" = the top-level config; Qwen2.5-Omni's sit in its thinker's too)
    media_token_configs: tuple[str, ...] = ("",)
    # the submodule to call with a processor batch ("" = the model itself)
    forward_path: str = ""
    extra_files: tuple[str, ...] = ()  # files beside the weights that from_pretrained needs, save_pretrained omits
    video_fallback: VideoFallback | None = None
    # "module:function" (path, revision) -> processor, where the stock processor cannot be built on tamp's install
    # (SmolVLM's needs num2words and torchvision); "" = the stock one (or video_fallback's)
    processor_loader: str = ""
    tiny: TinyBuild | None = None
    evaluation: Evaluation | None = None  # None: lmms-eval cannot run it (the text-only LMs)
    # token methods the family refuses at plan time: (method, why), the reason said in the one-line refusal
    refused_token_methods: tuple[tuple[str, str], ...] = ()
    source: str = ""  # the file that defined it (filled in by the registry)

    @property
    def multimodal(self) -> bool:
        return bool(self.inputs)

    def depth(self, config: Mapping[str, Any]) -> int | None:
        """The decoder layers of the language model of a checkpoint of this family, from its config.json (a dict,
        nothing loaded): the first of `text_config_paths` that holds num_hidden_layers; None when none does."""
        for path in self.text_config_paths:
            part: Any = config
            for key in path.split(".") if path else ():
                part = part.get(key) if isinstance(part, Mapping) else None
            layers = part.get("num_hidden_layers") if isinstance(part, Mapping) else None
            if isinstance(layers, int) and not isinstance(layers, bool):
                return layers
        return None
