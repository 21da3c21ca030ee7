"""`--calib picture-qa`: generated pictures with questions and answers, in the trained tiny model's domain.

Calibration data should look like what the model sees (the paper calibrates LLaVA-NeXT on its own instruction
data); for the trained tiny LLaVA-NeXT that is tamp.calibration.pictures' scenes. They come from their own seed
(``CALIB_SEED`` + the prune seed), never from the held-out split; each sample is a conversation of four
questions about one picture, rendered with the model's processor and chat template like LLaVA JSON data.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch

from tamp.calibration.chat import render
from tamp.calibration.pictures import CALIB_SEED, QUESTIONS, conversations, scenes
from tamp.calibration.pictures import render as draw
from tamp.errors import TampError


def picture_qa_batches(processor: Any, tokenizer: Any, multimodal: bool, nsamples: int,
                       seed: int) -> list[dict[str, torch.Tensor]]:
    """`nsamples` one-sample batches, each a picture and four questions about it with their answers."""
    if not multimodal:
        raise TampError("--calib picture-qa needs a model that takes images")
    stream = conversations(scenes(CALIB_SEED + seed), seed=CALIB_SEED + seed + 1, turns=len(QUESTIONS))
    batches = []
    for conv in itertools.islice(stream, nsamples):
        messages = []
        for i, msg in enumerate(conv.messages()):
            text = msg["content"].removeprefix("<image>\n")
            content: list[dict[str, str]] = [{"type": "image"}] if i == 0 else []
            messages.append({"role": msg["role"], "content": [*content, {"type": "text", "text": text}]})
        batches.append(render(processor, tokenizer, messages, [draw(conv.scene)]))
    return batches
