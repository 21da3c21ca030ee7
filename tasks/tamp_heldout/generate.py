"""Writes the held-out split (`python tasks/tamp_heldout/generate.py`): data/heldout.jsonl, byte-identical on
every run. The rows come from `tamp.calibration.pictures.heldout_rows` (its own seed; the trained tiny model's training
stream skips every one of these pictures); each row is drawn by `utils.doc_to_visual` when a task needs it.
"""

from __future__ import annotations

import json
from pathlib import Path

from tamp.calibration.pictures import heldout_rows

DATA = Path(__file__).resolve().parent / "data" / "heldout.jsonl"


def write(path: Path = DATA) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in heldout_rows()), encoding="utf-8")
    return path


if __name__ == "__main__":
    print(f"wrote {write()}")
