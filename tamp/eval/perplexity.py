"""Perplexity on plain text files, over consecutive non-overlapping windows."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tamp.calibration.text import read_text_files, tokenize_text


def perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    paths: Sequence[str | Path],
    seqlen: int = 256,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> float:
    """exp(mean token loss) over every full ``seqlen`` window of the joined files.

    Each batch's ``model(x, labels=x).loss`` averages over ``seqlen - 1`` predicted tokens per
    window; it is weighted by the number of predicted tokens, so batch size does not matter.
    The trailing partial window is dropped. Tokenized without special tokens (no BOS).
    """
    if seqlen < 2 or batch_size < 1:
        raise ValueError(f"need seqlen >= 2 and batch_size >= 1, got seqlen={seqlen}, batch_size={batch_size}")
    ids = tokenize_text(tokenizer, read_text_files(paths))
    nwin = ids.numel() // seqlen
    if nwin == 0:
        raise ValueError(f"evaluation text has {ids.numel()} tokens, fewer than one window of {seqlen}")
    windows = ids[: nwin * seqlen].view(nwin, seqlen)

    total_loss, total_tokens = 0.0, 0
    with torch.inference_mode():
        for start in tqdm(
            range(0, nwin, batch_size), desc="perplexity", unit="batch", disable=not sys.stderr.isatty()
        ):
            x = windows[start : start + batch_size].to(device)
            loss = model(x, labels=x).loss.float().item()
            predicted = x.shape[0] * (seqlen - 1)
            total_loss += loss * predicted
            total_tokens += predicted
    return math.exp(total_loss / total_tokens)
