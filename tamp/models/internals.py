"""Every access tamp makes to transformers' private internals, in one module.

Token methods and attention scoring need a few things transformers does not promise to keep: the config field
that picks a block's attention function, the module-level `eager_attention_forward` of each modeling file, the
final norm stored beside the decoder layers, the gated MLP's and the attention's submodule names, and swapping
one module instance's `forward`. An upgrade that moves one of them fails here with a `MovedInternal` that names
the installed transformers version and the internal that moved, instead of deep inside a prefill;
tests/tamp/models/test_internals.py checks every one of them on every tiny family.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from torch import nn

from tamp.errors import TampError

IMPLEMENTATION_FIELD = "_attn_implementation_internal"  # the config field AttentionInterface dispatches on
EAGER_FUNCTION = "eager_attention_forward"  # each modeling file's own eager attention
SELF_ATTENTION_NAMES = ("self_attn", "attn", "self_attention")
PROJECTION_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj")
GATED_MLP_NAMES = ("gate_proj", "up_proj", "down_proj", "act_fn")
MLP_NAME, NORM_NAME = "mlp", "norm"


class MovedInternal(TampError):
    """A transformers internal tamp relies on is not where this module looks for it."""


def moved(internal: str, where: str) -> MovedInternal:
    """The one message for a moved internal: the installed version, the internal, where it was looked for."""
    return MovedInternal(f"transformers {transformers.__version__} has no {internal} on {where}: an internal tamp "
                         "relies on moved; tamp/models/internals.py must follow it")


# ---- the attention implementation ------------------------------------------------------------------------
def attention_implementation(config: Any) -> str | None:
    """The attention function a config selects (None: transformers picks its default)."""
    if not hasattr(config, IMPLEMENTATION_FIELD):
        raise moved(f"config.{IMPLEMENTATION_FIELD}", type(config).__name__)
    return getattr(config, IMPLEMENTATION_FIELD)


def set_attention_implementation(config: Any, name: str | None) -> None:
    """Select an attention function by its AttentionInterface name for every block sharing the config, without
    transformers' checks (a temporary wrapper is not a known implementation)."""
    attention_implementation(config)  # present, or the moved-internal error
    setattr(config, IMPLEMENTATION_FIELD, name)


def eager_attention(attn: nn.Module) -> Callable[..., Any]:
    """The eager attention function of the modeling file that defines `attn`'s class."""
    module = sys.modules.get(type(attn).__module__)
    found = getattr(module, EAGER_FUNCTION, None)
    if not callable(found):
        raise moved(EAGER_FUNCTION, type(attn).__module__)
    return found


# ---- where things are inside a decoder block -------------------------------------------------------------
def self_attention(block: nn.Module) -> nn.Module:
    """A decoder block's self-attention module."""
    for name in SELF_ATTENTION_NAMES:
        found = getattr(block, name, None)
        if isinstance(found, nn.Module):
            return found
    raise moved(f"self-attention module ({' / '.join(SELF_ATTENTION_NAMES)})", type(block).__name__)


def attention_heads(block: nn.Module) -> tuple[int, int]:
    """(query heads, head_dim) of a block's self-attention, from its config (or its text config) and module."""
    attn = self_attention(block)
    config = getattr(attn, "config", None)
    heads = getattr(config, "num_attention_heads", None) or \
        getattr(getattr(config, "text_config", None), "num_attention_heads", None)
    head_dim = getattr(attn, "head_dim", None)
    if heads is None or head_dim is None:
        raise moved("config.num_attention_heads / head_dim", type(attn).__name__)
    return int(heads), int(head_dim)


def attention_window(block: nn.Module) -> int | None:
    """The sliding window of a block's self-attention (Gemma 3's local layers: keys within `window` positions of the
    query), None for global attention."""
    window = getattr(self_attention(block), "sliding_window", None)
    return window if isinstance(window, int) and not isinstance(window, bool) and window > 0 else None


def cached_length(cache: Any, layer: int) -> int | None:
    """How many keys a KV cache holds for one layer before the next update (a sliding layer of transformers'
    DynamicCache keeps only its last window - 1), None when the cache does not say."""
    layers = getattr(cache, "layers", None)
    if not isinstance(layers, (list, tuple)) or not 0 <= layer < len(layers):
        return None
    keys = getattr(layers[layer], "keys", None)
    return int(keys.shape[-2]) if isinstance(keys, torch.Tensor) and keys.dim() == 4 else None


@dataclass(frozen=True)
class Projections:
    """A self-attention's four linears."""

    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear


def attention_projections(block: nn.Module) -> Projections:
    """The q / k / v / o linears of a block's self-attention."""
    attn = self_attention(block)
    found = [getattr(attn, name, None) for name in PROJECTION_NAMES]
    for name, linear in zip(PROJECTION_NAMES, found):
        if not isinstance(linear, nn.Linear):
            raise moved(f"{name} linear", type(attn).__name__)
    return Projections(*found)


@dataclass(frozen=True)
class GatedMlp:
    """A Llama / Qwen2 MLP: down(act(gate(x)) * up(x))."""

    module: nn.Module
    gate: nn.Linear
    up: nn.Linear
    down: nn.Linear
    act: Callable[..., Any]


def gated_mlp(block: nn.Module) -> GatedMlp:
    """A decoder block's gated MLP and its parts."""
    mlp = getattr(block, MLP_NAME, None)
    if not isinstance(mlp, nn.Module):
        raise moved(f"{MLP_NAME} module", type(block).__name__)
    parts = [getattr(mlp, name, None) for name in GATED_MLP_NAMES]
    for name, part in zip(GATED_MLP_NAMES, parts):
        if part is None or (name != "act_fn" and not isinstance(part, nn.Linear)):
            raise moved(f"gated MLP part {name}", type(mlp).__name__)
    return GatedMlp(mlp, *parts)


def final_norm(model: nn.Module, layers_path: str) -> nn.Module:
    """The norm after the last decoder layer, stored beside the layers (`<text model>.norm`)."""
    owner_path = layers_path.rsplit(".", 1)[0]
    owner = model.get_submodule(owner_path)
    norm = getattr(owner, NORM_NAME, None)
    if not isinstance(norm, nn.Module):
        raise moved(f"final {NORM_NAME}", f"{type(owner).__name__} ({owner_path})")
    return norm


# ---- swapping one instance's forward ---------------------------------------------------------------------
def replace_forward(module: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
    """Make `module(...)` call `forward` for this instance only; returns the forward it had."""
    original = module.forward
    module.forward = forward
    return original


def restore_forward(module: nn.Module) -> None:
    """Undo `replace_forward`: the class's forward again."""
    module.__dict__.pop("forward", None)


# ---- Qwen3-VL's DeepStack ---------------------------------------------------------------------------------
# The text model's step adding vision features to the visual tokens after each of its first layers, and the
# forward arguments that carry them (a full-length visual mask [B, T], one feature tensor per such layer with one
# row per True of the mask, in order).
DEEPSTACK_METHOD = "_deepstack_process"
DEEPSTACK_ARGS = ("visual_pos_masks", "deepstack_visual_embeds")
DeepstackStep = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def layer_kinds(text_model: nn.Module) -> list[str] | None:
    """Each decoder block's attention kind ("full_attention", "sliding_attention" ...) from the text model's config
    (`layer_types`): models that mix kinds (Gemma 3) hand each kind its own mask and rotary. None without a list."""
    kinds = getattr(getattr(text_model, "config", None), "layer_types", None)
    return [str(k) for k in kinds] if isinstance(kinds, (list, tuple)) and kinds else None


def deepstack_step(text_model: nn.Module) -> DeepstackStep | None:
    """`step(hidden, mask, features) -> hidden`: the text model's own DeepStack addition, or None without one."""
    step = getattr(text_model, DEEPSTACK_METHOD, None)
    return step if callable(step) else None


def deepstack_inputs(kwargs: dict[str, Any]) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
    """(visual mask, features per layer) from the text model's forward arguments; None when it got none."""
    mask, features = (kwargs.get(name) for name in DEEPSTACK_ARGS)
    if not isinstance(mask, torch.Tensor) or not features:
        return None
    return mask, list(features)


class DeepstackRoute:
    """A text model's DeepStack step routed through a function; `remove()` gives it its own back."""

    def __init__(self, owner: nn.Module) -> None:
        self.owner = owner

    def remove(self) -> None:
        self.owner.__dict__.pop(DEEPSTACK_METHOD, None)


def route_deepstack(model: nn.Module, layers_path: str,
                    cut: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                    ) -> DeepstackRoute | None:
    """Where the text model holding the decoder layers adds DeepStack features, pass its mask and features through
    `cut(hidden, mask, features) -> (mask, features)` first. None for a model without DeepStack; a config that
    names DeepStack layers on a text model without that step is a moved internal."""
    owner_path = layers_path.rsplit(".", 1)[0]
    owner = model.get_submodule(owner_path)
    original = deepstack_step(owner)
    if original is None:
        vision = getattr(getattr(model, "config", None), "vision_config", None)
        if getattr(vision, "deepstack_visual_indexes", None):
            raise moved(DEEPSTACK_METHOD, f"{type(owner).__name__} ({owner_path})")
        return None

    def process(hidden_states: torch.Tensor, visual_pos_masks: torch.Tensor, visual_embeds: torch.Tensor) -> Any:
        return original(hidden_states, *cut(hidden_states, visual_pos_masks, visual_embeds))

    owner.__dict__[DEEPSTACK_METHOD] = process
    return DeepstackRoute(owner)


# ---- LLaVA-NeXT / OneVision's anyres grid ----------------------------------------------------------------
def anyres_unpadded_grid(image_size: tuple[int, int], grid_pinpoints: list, tile: int, side: int) -> tuple[int, int]:
    """(rows, cols) of an anyres image's high-resolution features after transformers unpads them: the tile grid
    from `get_anyres_image_grid_shape` (tiles of `tile` pixels, `side` x `side` features each), cropped by
    `unpad_image` to the image's aspect, both functions of transformers' llava_next modeling file."""
    from transformers.models.llava_next import modeling_llava_next as llava_next

    names = ("get_anyres_image_grid_shape", "unpad_image")
    missing = [n for n in names if not hasattr(llava_next, n)]
    if missing:
        raise moved(missing[0], "transformers.models.llava_next.modeling_llava_next")
    tiles_high, tiles_wide = llava_next.get_anyres_image_grid_shape(list(image_size), grid_pinpoints, tile)
    shape = llava_next.unpad_image(torch.empty(0, tiles_high * side, tiles_wide * side), list(image_size)).shape
    return int(shape[1]), int(shape[2])


def anyres_packed_sources(image_size: tuple[int, int], grid_pinpoints: list, tile: int,
                          side: int) -> tuple[int, int, torch.Tensor]:
    """(tiles_high, tiles_wide, sources) of an anyres image: for each token of its packed features as
    `pack_image_features` lays them out (the base tile's side x side, then the unpadded tile grid, a newline closing
    each row), the crop x side**2 + patch it comes from (crop 0 the base tile, tiles row-major after it), -1 for a
    newline. The same two transformers functions as `anyres_unpadded_grid`, applied to crop-patch indices."""
    from transformers.models.llava_next import modeling_llava_next as llava_next

    names = ("get_anyres_image_grid_shape", "unpad_image")
    missing = [n for n in names if not hasattr(llava_next, n)]
    if missing:
        raise moved(missing[0], "transformers.models.llava_next.modeling_llava_next")
    high, wide = llava_next.get_anyres_image_grid_shape(list(image_size), grid_pinpoints, tile)
    per = side * side
    tiles = torch.arange(per, per * (1 + high * wide)).view(high, wide, side, side)
    grid = tiles.permute(0, 2, 1, 3).reshape(1, high * side, wide * side)
    grid = llava_next.unpad_image(grid, list(image_size))[0]
    rows = torch.cat([grid, torch.full((grid.shape[0], 1), -1, dtype=grid.dtype)], dim=1)
    return int(high), int(wide), torch.cat([torch.arange(per), rows.flatten()])


# ---- one check of everything above, for a loaded model ---------------------------------------------------
def check_model(model: nn.Module, layers_path: str) -> list[str]:
    """Look up every internal on a loaded model (its first decoder layer and final norm); the names checked, or the
    MovedInternal of the first one missing."""
    layers = model.get_submodule(layers_path)
    block = layers[0]
    attn = self_attention(block)
    attention_implementation(attn.config)
    eager_attention(attn)
    attention_heads(block)
    attention_projections(block)
    gated_mlp(block)
    final_norm(model, layers_path)
    return [IMPLEMENTATION_FIELD, EAGER_FUNCTION, "self_attn", "num_attention_heads/head_dim", *PROJECTION_NAMES,
            *GATED_MLP_NAMES, NORM_NAME]


# ---- a vision tower's self-attention ---------------------------------------------------------------------
VISION_ATTENTION_LINEARS = (("q_proj", "k_proj", "v_proj"), ("qkv",))  # CLIP / SigLIP; Qwen2-VL / Qwen2.5-VL


def is_vision_attention(module: nn.Module) -> bool:
    """Whether a vision-tower module is a self-attention (heads and head_dim, and its q / k / v linears or one qkv
    linear): what the vision-side FLOP count charges the attention matmuls to."""
    if not (isinstance(getattr(module, "num_heads", None), int) and isinstance(getattr(module, "head_dim", None), int)):
        return False
    return any(all(isinstance(getattr(module, n, None), nn.Linear) for n in names) for names in VISION_ATTENTION_LINEARS)


def vision_attention_width(module: nn.Module) -> int:
    """heads x head_dim of a vision self-attention (`is_vision_attention`)."""
    return int(module.num_heads) * int(module.head_dim)


# ---- Qwen2.5-VL's window order ---------------------------------------------------------------------------
def vision_window_index(grid_thw: torch.Tensor, vision_config: Any) -> torch.Tensor:
    """Qwen2.5-VL's tower runs its merge units (spatial_merge_size^2 patches each) in window order: the unit in
    original order at each position of that order (transformers' get_vision_window_index)."""
    from transformers import vision_utils

    if not hasattr(vision_utils, "get_vision_window_index"):
        raise moved("get_vision_window_index", "transformers.vision_utils")
    index, _ = vision_utils.get_vision_window_index(grid_thw, int(vision_config.spatial_merge_size),
                                                    int(vision_config.window_size), int(vision_config.patch_size))
    return index
