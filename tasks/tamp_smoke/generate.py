"""Deterministic generator of the offline smoke data (`python tasks/tamp_smoke/generate.py`).

Each row describes one small picture: a coloured shape on a white background with a word written
under it. The picture itself is drawn from the row by `utils.render` whenever a task needs it, so the
shipped data is two small JSONL files and the images are identical wherever they are drawn.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
WORDS = ("cat", "dog", "sun", "car", "tree", "bird")
QUESTIONS = {
    "colour": "What colour is the shape in the image?",
    "shape": "What shape is in the image?",
    "word": "What word is written in the image?",
}
ROWS = 24
SEED = 1234
DATA_DIR = Path(__file__).resolve().parent / "data"


def pictures(seed: int = SEED, n: int = ROWS) -> list[dict]:
    """`n` picture descriptions (colour, shape, word), the same for the same seed."""
    rng = random.Random(seed)
    return [{"colour": rng.choice(COLOURS), "shape": rng.choice(SHAPES), "word": rng.choice(WORDS)} for _ in range(n)]


def vqa_rows(seed: int = SEED, n: int = ROWS) -> list[dict]:
    """Open questions with one exact one-word answer; the question kind cycles colour, shape, word."""
    kinds = list(QUESTIONS)
    rows = []
    for i, pic in enumerate(pictures(seed, n)):
        kind = kinds[i % len(kinds)]
        rows.append({"id": f"vqa-{i:03d}", **pic, "kind": kind, "question": QUESTIONS[kind], "answer": pic[kind]})
    return rows


def mc_rows(seed: int = SEED + 1, n: int = ROWS) -> list[dict]:
    """Multiple choice on the colour: four options in a fixed order, `label` is the right index."""
    rows = []
    for i, pic in enumerate(pictures(seed, n)):
        rows.append({"id": f"mc-{i:03d}", **pic, "question": QUESTIONS["colour"], "choices": list(COLOURS),
                     "label": COLOURS.index(pic["colour"]), "answer": pic["colour"]})
    return rows


def write(out: Path = DATA_DIR) -> list[Path]:
    """Write vqa.jsonl and mc.jsonl into `out` (byte-identical on every run)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, rows in (("vqa.jsonl", vqa_rows()), ("mc.jsonl", mc_rows())):
        path = out / name
        path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write():
        print(f"wrote {p}")
