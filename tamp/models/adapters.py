"""The generic model adapter: where the decoder layers are, which linears to prune, which token is which modality,
read from the model's family (``tamp.families``: each family's paths and media token configs).

Running a layer needs no per-family code: the engine captures every argument the model itself passes to
the first layer (position embeddings, masks, 3-D mrope position ids, cache position ...) and replays them,
so it follows whatever the installed transformers version does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from tamp.errors import TampError
from tamp.families.base import Family
from tamp.families.registry import families, family_of

MODALITIES = ("image", "video", "audio", "text")
# config attributes that carry the special token id standing for each media modality
_TOKEN_ATTRS = {
    "image": ("image_token_id", "image_token_index"),
    "video": ("video_token_id", "video_token_index"),
    "audio": ("audio_token_id", "audio_token_index"),
}


@dataclass
class Stack:
    """A sequence of transformer blocks that the engine prunes one block at a time."""

    name: str  # module path prefix, e.g. "model.language_model.layers"
    layers: nn.ModuleList
    is_language_model: bool


@dataclass
class ModelAdapter:
    """Where things are in one model family."""

    family: str
    text_model_paths: tuple[str, ...]  # candidates, first that exists wins
    vision_layer_paths: tuple[str, ...] = ()
    media_token_ids: dict[str, list[int]] = field(default_factory=dict)
    # the submodule to call with a processor batch ("" = the model itself). Qwen2.5-Omni's top-level model has
    # no forward (only generate, which also drives the talker); its thinker is the multimodal LM.
    forward_path: str = ""
    # files beside the weights that from_pretrained needs and save_pretrained does not write
    extra_files: tuple[str, ...] = ()

    def runner(self, model: nn.Module) -> nn.Module:
        """The module that takes ``model(**batch)`` calls and owns the LM head."""
        return model.get_submodule(self.forward_path) if self.forward_path else model

    def _find(self, model: nn.Module, paths: tuple[str, ...]) -> tuple[str, nn.Module] | None:
        for path in paths:
            try:
                return path, model.get_submodule(path)
            except AttributeError:
                continue
        return None

    def language_stack(self, model: nn.Module) -> Stack:
        found = self._find(model, tuple(p + ".layers" for p in self.text_model_paths))
        if found is None:
            raise TampError(f"cannot find the decoder layers of this {self.family} model; is it a supported family?")
        return Stack(found[0], found[1], True)

    def vision_stack(self, model: nn.Module) -> Stack | None:
        found = self._find(model, self.vision_layer_paths)
        return None if found is None else Stack(found[0], found[1], False)

    def stacks(self, model: nn.Module, prune_vision: bool) -> list[Stack]:
        """Stacks to prune, in forward order (the vision tower feeds the language model)."""
        stacks = []
        if prune_vision:
            vision = self.vision_stack(model)
            if vision is None:
                raise TampError(f"--prune-vision: this {self.family} model has no vision tower")
            stacks.append(vision)
        stacks.append(self.language_stack(model))
        return stacks

    def token_masks(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Boolean masks (same shape as input_ids) per modality; text = every token that is no media token."""
        masks: dict[str, torch.Tensor] = {}
        media_any = torch.zeros_like(input_ids, dtype=torch.bool)
        for modality, ids in self.media_token_ids.items():
            mask = torch.isin(input_ids, torch.tensor(ids, device=input_ids.device))
            if bool(mask.any()):
                masks[modality] = mask
            media_any |= mask
        masks["text"] = ~media_any
        return masks


def prunable_linears(layer: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear inside one block (q, k, v, o, gate, up, down for a decoder layer)."""
    return {name: mod for name, mod in layer.named_modules() if isinstance(mod, nn.Linear)}


# model_types of causal LMs the generic adapter takes without a family of their own
CAUSAL_LM_TYPES = ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "phi3", "olmo", "granite")


def multimodal_types() -> dict[str, Family]:
    """model_type -> family, for the multimodal families (the first family in table order per model_type)."""
    out: dict[str, Family] = {}
    for family in families().values():
        if family.multimodal:
            out.setdefault(family.model_type, family)
    return out


def media_token_ids(config, sub_configs: tuple[str, ...] = ("", "thinker_config")) -> dict[str, list[int]]:
    """Special token ids per media modality, read from the model config and the sub-configs a family names
    ("" = the top level; Qwen2.5-Omni's ids sit in its thinker's config too)."""
    ids: dict[str, list[int]] = {}
    found = (config if not name else getattr(config, name, None) for name in sub_configs)
    sources = [c for c in found if c is not None]
    for modality, attrs in _TOKEN_ATTRS.items():
        for source in sources:
            for attr in attrs:
                value = getattr(source, attr, None)
                if isinstance(value, int) and value >= 0:
                    ids.setdefault(modality, [])
                    if value not in ids[modality]:
                        ids[modality].append(value)
    return ids


def get_adapter(model: nn.Module) -> ModelAdapter:
    """The adapter for a loaded model: its family's (tamp.families.registry.family_of), else the generic causal LM's."""
    config = model.config
    model_type = getattr(config, "model_type", "")
    family = family_of(config)
    if family is not None:
        tokens = media_token_ids(config, family.media_token_configs) if family.multimodal else {}
        return ModelAdapter(family.name, family.text_model_paths, family.vision_layer_paths, tokens,
                            family.forward_path, family.extra_files)
    if model_type in CAUSAL_LM_TYPES or hasattr(model, "model") and hasattr(model.model, "layers"):
        return ModelAdapter(model_type or "causal-lm", ("model",), (), {})
    raise TampError(
        f"unsupported model type '{model_type}'; supported: {', '.join([*multimodal_types(), *CAUSAL_LM_TYPES])}"
    )
