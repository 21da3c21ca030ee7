"""The `--calib` grammar, owned here once: what a spec names, what it lacks, what it fingerprints, which samples
it draws.

It used to be parsed three times (the loader, the pre-flight checks, and the harness's artifact-cache fingerprint,
which re-implemented the sample draw), so a change to one could silently split them: the cache would then hash
other files than the ones tamp prunes with. Every reader of a spec goes through `CalibrationSpec` instead.

Forms, tried in this order:

* ``synthetic``: deterministic random data, for tiny models;
* ``picture-qa``: generated pictures with questions and answers (tamp.calibration.pictures), the trained tiny
  model's own domain; no files, so nothing to check or hash beyond the generator (part of tamp's source);
* ``text:FILE[,FILE...]``: plain text files, joined in order (blanks around the commas are ignored);
* anything holding ``.json``: a LLaVA-format JSON, ``FILE.json`` (media beside it) or ``FILE.json:MEDIA_DIR``
  (split at the last colon, unless the spec ends in ``.json``).

The text is taken literally: the harness fills ``$TAMP_DATA`` into its default specs before they get here
(harness.model_specs.expand_calib).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tamp.calibration.llava_json import MEDIA_KEYS, load_llava_json, media_names, media_problems
from tamp.errors import TampError

TEXT_PREFIX = "text:"
PICTURE_QA = "picture-qa"
UNKNOWN_SPEC = "give a LLaVA-format .json[:MEDIA_DIR], text:FILE[,FILE...], synthetic or picture-qa"
Kind = Literal["synthetic", "picture-qa", "text", "llava"]


@dataclass(frozen=True)
class CalibrationSpec:
    """A parsed `--calib`: its text as given (recorded in pruning.json and the cache key), its kind and files."""

    text: str
    kind: Kind
    files: tuple[Path, ...] = ()  # text: the files, in order
    json_path: Path | None = None  # llava: the JSON
    media_dir: Path | None = None  # llava: the folder its media names are relative to

    @classmethod
    def parse(cls, text: str) -> CalibrationSpec:
        """The spec `text` names; TampError (one line, what to give instead) when it is none of the forms."""
        if text == "synthetic":
            return cls(text, "synthetic")
        if text == PICTURE_QA:
            return cls(text, "picture-qa")
        if text.startswith(TEXT_PREFIX):
            files = tuple(Path(s.strip()) for s in text[len(TEXT_PREFIX):].split(",") if s.strip())
            if not files:
                raise TampError(f"calibration spec {text!r} names no file")
            return cls(text, "text", files=files)
        if ".json" in text:
            if ":" in text and not text.endswith(".json"):
                json_part, media_part = text.rsplit(":", 1)
                return cls(text, "llava", json_path=Path(json_part), media_dir=Path(media_part))
            return cls(text, "llava", json_path=Path(text), media_dir=Path(text).parent)
        raise TampError(f"unknown --calib '{text}': {UNKNOWN_SPEC}")

    @staticmethod
    def draw(available: int, nsamples: int, seed: int) -> list[int]:
        """The samples drawn from `available`, in order: as the released TAMP code, numpy's legacy
        RandomState(seed).choice without replacement (all of them, shuffled, when fewer than `nsamples`)."""
        n = min(nsamples, available)
        return [int(i) for i in np.random.RandomState(seed).choice(available, n, replace=False)]

    def drawn(self, nsamples: int, seed: int) -> tuple[list[dict[str, Any]], list[int]]:
        """A LLaVA spec's samples (the whole JSON, checked) and the indices of those drawn; TampError if unusable."""
        json_path, _ = self.llava_paths()
        data = load_llava_json(json_path)
        return data, self.draw(len(data), nsamples, seed)

    def problems(self, nsamples: int, seed: int) -> list[str]:
        """What the data lacks, found without a model: missing files, a bad JSON, missing media folder, drawn media
        missing or not images. Empty when it can be built (what fits the model is checked once it is loaded)."""
        if self.kind == "text":
            return [f"calibration text file not found: {p}" for p in self.files if not p.is_file()]
        if self.kind == "llava":
            try:
                data, order = self.drawn(nsamples, seed)
            except TampError as exc:
                return [str(exc)]
            return media_problems(data, order, self.llava_paths()[1])
        return []

    def fingerprint(self, nsamples: int, seqlen: int, seed: int,
                    hash_file: Callable[[Path], str]) -> dict[str, Any]:
        """What the data is, without a model: the spec and its settings, plus the hash of every file it reads (the
        text files; the JSON and the media of the drawn samples). `hash_file` is the caller's, so that a cache
        hashes calibration files by the same rule as everything else it keys. Call it on a spec without problems.
        """
        out: dict[str, Any] = {"spec": self.text, "nsamples": nsamples, "seqlen": seqlen, "seed": seed}
        if self.kind == "text":
            out["files"] = {str(p): hash_file(p) for p in self.files}
        elif self.kind == "llava":
            json_path, media_dir = self.llava_paths()
            out["json_sha256"] = hash_file(json_path)
            data, order = self.drawn(nsamples, seed)
            h = hashlib.sha256()
            for index in order:  # a missing file still counts (by name), so adding it later changes the hash
                for kind in MEDIA_KEYS:
                    for name in media_names(data[index], kind):
                        path = media_dir / name
                        h.update(f"{kind}:{name}".encode() + b"\0" +
                                 (hash_file(path).encode() if path.is_file() else b"missing"))
            out["images"] = h.hexdigest()  # all media, not images only: the key name predates video and audio
        return out

    def llava_paths(self) -> tuple[Path, Path]:
        """(the JSON, the media folder) of a LLaVA spec."""
        if self.json_path is None or self.media_dir is None:
            raise TypeError(f"calibration spec {self.text!r} is {self.kind}, not a LLaVA-format JSON")
        return self.json_path, self.media_dir
