"""lmms-eval hooks shared by our generated picture tasks (tasks/tamp_smoke, tasks/tamp_heldout): the prompt and
the exact-match score. Each task's utils.py adds its own picture drawing."""

from __future__ import annotations

import re
from typing import Any


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> str:
    kw = lmms_eval_specific_kwargs or {}
    return f"{kw.get('pre_prompt', '')}{doc['question']}{kw.get('post_prompt', '')}"


def normalize(text: str) -> str:
    """Lower case, first line, surrounding spaces and punctuation removed."""
    text = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return re.sub(r"^[\W_]+|[\W_]+$", "", text.lower())


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Exact match of the normalised answer with the expected word: 1.0 or 0.0."""
    pred = normalize(results[0] if results else "")
    return {"exact_match": float(pred == doc["answer"])}
