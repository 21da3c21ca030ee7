"""`--calib` spec -> Calibration: LLaVA JSON + media (images, videos, audio), text:FILE[,FILE...], or synthetic."""

from __future__ import annotations

from tamp.calibration.batches import Calibration, fingerprint
from tamp.calibration.llava_json import llava_batches
from tamp.calibration.synthetic import synthetic_batches
from tamp.errors import TampError
from tamp.models.loading import LoadedModel, _is_multimodal

TEXT_BATCH_SIZE = 8  # equal-length text segments are run 8 at a time; images one sample at a time
UNKNOWN_SPEC = "give a LLaVA-format .json[:MEDIA_DIR], text:FILE[,FILE...] or synthetic"


def calibration_problems(spec: str, nsamples: int, seed: int) -> list[str]:
    """What a `--calib` spec lacks, found before any model is loaded: missing files, a bad JSON, media that are
    missing or not images. Empty when it can be built (what fits the model is checked once it is loaded)."""
    if spec == "synthetic":
        return []
    if spec.startswith("text:"):
        from tamp.calibration.text import parse_text_spec

        try:
            paths = parse_text_spec(spec)
        except ValueError as exc:
            return [str(exc)]
        return [f"calibration text file not found: {p}" for p in paths if not p.is_file()]
    if ".json" in spec:
        from tamp.calibration.llava_json import media_problems

        return media_problems(spec, nsamples, seed)
    return [f"unknown --calib '{spec}': {UNKNOWN_SPEC}"]


def build_calibration(spec: str, loaded: LoadedModel, nsamples: int, seqlen: int, seed: int) -> Calibration:
    multimodal = _is_multimodal(loaded.model.config)
    details: dict = {}
    if spec == "synthetic":
        batches = synthetic_batches(loaded.processor, loaded.tokenizer, multimodal, nsamples, seqlen, seed,
                                    model_type=getattr(loaded.model.config, "model_type", ""))
        without_media = 0
    elif spec.startswith("text:"):
        from tamp.calibration.text import parse_text_spec, text_segments

        try:
            paths = parse_text_spec(spec)
            ids = text_segments(loaded.tokenizer, paths, nsamples, seqlen)
        except (FileNotFoundError, ValueError) as exc:
            raise TampError(str(exc)) from None
        batches = [{"input_ids": chunk, "attention_mask": chunk.new_ones(chunk.shape)}
                   for chunk in ids.split(TEXT_BATCH_SIZE)]
        details = {"files": [str(p) for p in paths]}
        without_media = nsamples
    elif ".json" in spec:
        batches, details = llava_batches(spec, loaded.processor, loaded.tokenizer, nsamples, seed)
        without_media = details["samples_without_media"]
    else:
        raise TampError(f"unknown --calib '{spec}': {UNKNOWN_SPEC}")
    warnings = []
    if spec == "synthetic" and sum(p.numel() for p in loaded.model.parameters()) > 50_000_000:
        warnings.append("synthetic calibration on a full-size model: random images and words are meant for tiny "
                        "models; pass --calib with real data for numbers you can trust")
    if multimodal and without_media:
        warnings.append(
            f"{without_media} of {nsamples} calibration samples carry no image/video/audio although the model is "
            "multimodal; multimodal statistics will see text tokens only"
        )
    samples = sum(int(b["input_ids"].shape[0]) for b in batches)
    return Calibration(batches, spec, fingerprint(batches, spec), samples, warnings, details)
