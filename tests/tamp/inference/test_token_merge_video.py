"""AIM merges within each video frame, never across frames: the frame groups read from LLaVA-OneVision's frame
axis and Qwen2-VL's temporal grid, and the merged states equal the merge run frame by frame on the embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tamp.algorithms.token_merge import bipartite_merge, merge_target
from tamp.inference.sequence_edit import visual_groups
from tamp.models.adapters import get_adapter
from tamp.token_transform import TokenTransform


def test_groups_split_video_runs_into_frames() -> None:
    visual = torch.tensor([[0, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    video = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    groups = visual_groups(visual, video, [2])[0].tolist()
    # an image (one group); a video of 2 frames x 4 tokens and one token left over (a closing newline)
    assert groups == [-1, 0, 0, 0, -1, 2, 2, 2, 2, 3, 3, 3, 3, 4, -1]
    assert visual_groups(visual, video, [])[0].tolist()[5:14] == [2] * 9  # no frame count: the run is one group


def _video_inputs(model_path, frames: int = 4):
    from tamp.processors import load_processor

    proc = load_processor(model_path)
    video = np.random.default_rng(0).integers(0, 256, (frames, 60, 80, 3), dtype=np.uint8)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What moves?"}]}]
    prompt = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return dict(proc(text=[prompt], videos=[video], return_tensors="pt"))


VIDEO_FAMILIES = ("llava-onevision", "qwen2-vl", "qwen2.5-vl", "qwen3-vl")


@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_video_frames_merge_apart(tiny_model, family: str) -> None:
    from transformers import AutoModelForImageTextToText

    path = tiny_model(family)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    inputs = _video_inputs(path)
    adapter = get_adapter(model)
    first = adapter.language_stack(model).layers[0]
    seen: dict[str, torch.Tensor] = {}

    def before(module, args, kwargs) -> None:  # registered before the dropper: the embeddings as they came
        seen["in"] = (args[0] if args else kwargs["hidden_states"])[0].clone()

    probe = first.register_forward_pre_hook(before, with_kwargs=True)
    dropper = TokenTransform.build("aim", {"aim_stages": "merge", "aim_merge_keep": 0.5,
                                                  "aim_semantics": "removal", "aim_merge_schedule": "share"}).install(model)

    def after(module, args, kwargs) -> None:  # registered after it: what layer 0 ran on
        seen["out"] = (args[0] if args else kwargs["hidden_states"])[0].clone()

    merged = first.register_forward_pre_hook(after, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        dropper.remove()
        probe.remove()
        merged.remove()
    video_id = adapter.media_token_ids["video"][0]
    positions = torch.nonzero(inputs["input_ids"][0] == video_id).flatten()
    if "video_grid_thw" in inputs:  # Qwen: temporal patches of two frames each
        frames = int(inputs["video_grid_thw"][0, 0])
    else:
        frames = int(inputs["pixel_values_videos"].shape[1])
    per = positions.numel() // frames
    assert frames >= 2 and per >= 2
    kept = dropper.kept_by_layer[0][0]
    expected_kept, expected_states = [], []
    for f in range(frames + 1):  # each frame, then whatever is left over (LLaVA-OneVision's newline)
        members = positions[f * per:(f + 1) * per] if f < frames else positions[frames * per:]
        if members.numel() == 0:
            continue
        idx, states, _ = bipartite_merge(seen["in"][members], merge_target(int(members.numel()), 0.5))
        expected_kept += members[idx].tolist()
        expected_states += list(states)
    video = set(positions.tolist())
    kept_video = [p for p in kept.tolist() if p in video]
    assert kept_video == expected_kept  # frames in order, each frame's survivors in order
    rows = [j for j, p in enumerate(kept.tolist()) if p in video]
    assert torch.equal(seen["out"][rows], torch.stack(expected_states))
    stats = dropper.history[-1]
    assert stats.visual_kept_per_layer[0] == len(expected_kept) < positions.numel()


@pytest.mark.parametrize("implementation", ("sdpa", "eager"))
@pytest.mark.parametrize("family", VIDEO_FAMILIES)
def test_cached_video_generation_equals_masked_recompute(tiny_model, family: str, implementation: str) -> None:
    """AIM on a video (merged per frame, then pruned after layers 1 and 2): cached greedy decoding, with Qwen's
    3-D mrope positions continuing past the original length, equals recomputing the whole sequence each step."""
    from transformers import AutoModelForImageTextToText

    from tests.tamp.inference.methods import SETTINGS
    from tests.tamp.inference.test_token_drop import check_cached_generation

    path = tiny_model(family)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()
    model.set_attn_implementation(implementation)
    inputs = _video_inputs(path)
    media = [i for ids in get_adapter(model).media_token_ids.values() for i in ids]
    dropper = check_cached_generation(model, inputs, media, TokenTransform.build("aim", SETTINGS["aim"]).install(model))
    stats = dropper.history[0]
    assert stats.visual_kept_per_layer[0] < stats.visual_in and stats.visual_kept_per_layer[3] < \
        stats.visual_kept_per_layer[1]
