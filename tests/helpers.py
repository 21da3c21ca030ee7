"""Small helpers shared by tests (not fixtures)."""

from __future__ import annotations

from pathlib import Path

import torch

MULTIMODAL = ("llava", "llava-next", "qwen2-vl", "qwen2.5-vl", "qwen3-vl", "internvl3", "smolvlm")


def load_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Parameters by module name, loaded through transformers (on-disk key names can differ)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(directory)
    auto = AutoModelForImageTextToText if hasattr(config, "vision_config") else AutoModelForCausalLM
    return {k: v.detach().clone() for k, v in auto.from_pretrained(directory).state_dict().items()}


def load_for_generation(path: Path, family: str):
    """Plain transformers loading, as a user of the artifact would do it."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    from tamp.processors import load_processor  # AutoProcessor, but Qwen-VL also works without torchvision

    if family in MULTIMODAL:
        return AutoModelForImageTextToText.from_pretrained(path), load_processor(path)
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def generate_once(path: Path, family: str, new_tokens: int = 3) -> torch.Tensor:
    from PIL import Image

    model, proc = load_for_generation(path, family)
    if family in MULTIMODAL:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is red?"}]}]
        prompt = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        image = Image.new("RGB", (64, 64), (200, 30, 30))
        inputs = proc(text=[prompt], images=[image], return_tensors="pt")
    else:
        inputs = proc("the red house", return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + new_tokens
    return out


def tamper_zeros(artifact: Path) -> None:
    """Make the zeros of one pruned matrix non-zero, as an edit after pruning would (same file size)."""
    from safetensors.torch import load_file, save_file

    weights = load_file(str(artifact / "model.safetensors"))
    name = next(k for k in weights if k.endswith("layers.0.self_attn.q_proj.weight"))
    weights[name] = torch.where(weights[name] == 0, torch.full_like(weights[name], 0.5), weights[name])
    save_file(weights, str(artifact / "model.safetensors"), metadata={"format": "pt"})


# commands slow enough to be stopped mid-run (Ctrl-C, SIGTERM), with what their one error line must tell the user;
# OUT is replaced by the test's output folder
STOPPABLE_COMMANDS = [
    (["-m", "tamp.cli", "prune", "--model", "tiny-llava-next", "--method", "wanda", "--nsamples", "64",
      "--device", "cpu", "--out", "OUT"], "nothing half-written is left"),
    (["-m", "harness.cli", "run", "--model", "tiny-llava-next", "--sparsity", "0.5", "--tasks", "tamp_smoke_vqa",
      "--output", "OUT/runs", "--artifacts", "OUT/art", "--device", "cpu"], "run the same command to resume"),
]
STOPPABLE_IDS = ["tamp-prune", "harness-run"]
