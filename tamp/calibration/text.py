"""Calibration token segments cut from plain text files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from tamp.calibration.spec import TEXT_PREFIX as TEXT_SPEC_PREFIX
from tamp.calibration.spec import CalibrationSpec
from tamp.errors import TampError


def read_text_files(paths: Sequence[str | Path]) -> str:
    """Read the files (UTF-8) and join them with a blank line ("\\n\\n")."""
    texts = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"text file not found: {p}")
        texts.append(p.read_text(encoding="utf-8"))
    text = "\n\n".join(texts)
    if not text.strip():
        raise ValueError(f"no text in {[str(p) for p in paths] or 'an empty file list'}")
    return text


def tokenize_text(tokenizer: PreTrainedTokenizerBase, text: str) -> torch.LongTensor:
    """Tokenize ``text`` as one stream without special tokens (no BOS/EOS); 1-D LongTensor."""
    # One call over the whole text (the windows are cut afterwards); verbose=False silences the
    # "longer than model_max_length" warning, which does not apply to a stream cut into windows.
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def text_segments(
    tokenizer: PreTrainedTokenizerBase, paths: Sequence[str | Path], nsamples: int, seqlen: int
) -> torch.LongTensor:
    """The first ``nsamples`` consecutive non-overlapping ``seqlen``-token segments of the joined files.

    Returns a LongTensor of shape (nsamples, seqlen).
    """
    if nsamples < 1 or seqlen < 1:
        raise ValueError(f"nsamples and seqlen must be positive, got nsamples={nsamples}, seqlen={seqlen}")
    ids = tokenize_text(tokenizer, read_text_files(paths))
    available = ids.numel() // seqlen
    if available < nsamples:
        raise ValueError(
            f"calibration text has {ids.numel()} tokens: only {available} segments of {seqlen} tokens "
            f"available, {nsamples} requested; lower --nsamples/--seqlen or add files"
        )
    return ids[: nsamples * seqlen].view(nsamples, seqlen).clone()


def parse_text_spec(spec: str) -> list[Path]:
    """Parse ``"text:FILE[,FILE...]"`` into a list of paths (existence is checked when read); ValueError if it is
    not one. The grammar is CalibrationSpec's; this keeps the text module's own entry point."""
    if not spec.startswith(TEXT_SPEC_PREFIX):
        raise ValueError(f"calibration spec must look like 'text:FILE[,FILE...]', got {spec!r}")
    try:
        return list(CalibrationSpec.parse(spec).files)
    except TampError as exc:
        raise ValueError(str(exc)) from None
