"""`--calib` spec -> Calibration: LLaVA JSON + media (images, videos, audio), text:FILE[,FILE...], synthetic, or
picture-qa (generated pictures in the trained tiny model's domain).

What a spec names, lacks and draws is tamp.calibration.spec's; this module turns it into model inputs.
"""

from __future__ import annotations

from typing import Any

from tamp.calibration.batches import Calibration, fingerprint
from tamp.calibration.llava_json import llava_batches
from tamp.calibration.picture_qa import picture_qa_batches
from tamp.calibration.spec import CalibrationSpec
from tamp.calibration.synthetic import synthetic_batches
from tamp.calibration.text import text_segments
from tamp.errors import TampError
from tamp.models.loading import LoadedModel, _is_multimodal

TEXT_BATCH_SIZE = 8  # equal-length text segments are run 8 at a time; images one sample at a time


def calibration_problems(spec: str, nsamples: int, seed: int) -> list[str]:
    """What a `--calib` spec lacks, found before any model is loaded (CalibrationSpec.problems), or why it is not
    a spec at all. Empty when it can be built (what fits the model is checked once it is loaded)."""
    try:
        parsed = CalibrationSpec.parse(spec)
    except TampError as exc:
        return [str(exc)]
    return parsed.problems(nsamples, seed)


def build_calibration(spec: str, loaded: LoadedModel, nsamples: int, seqlen: int, seed: int) -> Calibration:
    parsed = CalibrationSpec.parse(spec)
    multimodal = _is_multimodal(loaded.model.config)
    details: dict[str, Any] = {}
    if parsed.kind == "synthetic":
        batches = synthetic_batches(loaded.processor, loaded.tokenizer, multimodal, nsamples, seqlen, seed,
                                    model_type=getattr(loaded.model.config, "model_type", ""))
        without_media = 0
    elif parsed.kind == "picture-qa":
        batches = picture_qa_batches(loaded.processor, loaded.tokenizer, multimodal, nsamples, seed)
        without_media = 0
    elif parsed.kind == "text":
        try:
            ids = text_segments(loaded.tokenizer, parsed.files, nsamples, seqlen)
        except (FileNotFoundError, ValueError) as exc:
            raise TampError(str(exc)) from None
        batches = [{"input_ids": chunk, "attention_mask": chunk.new_ones(chunk.shape)}
                   for chunk in ids.split(TEXT_BATCH_SIZE)]
        details = {"files": [str(p) for p in parsed.files]}
        without_media = nsamples
    else:
        json_path, media_dir = parsed.llava_paths()
        data, order = parsed.drawn(nsamples, seed)
        batches, held = llava_batches(data, order, media_dir, loaded.processor, loaded.tokenizer)
        details = {"json": str(json_path), "image_dir": str(media_dir), "available": len(data),
                   "drawn": len(order), "indices": order, **held}
        without_media = held["samples_without_media"]
    warnings = []
    if parsed.kind == "synthetic" and sum(p.numel() for p in loaded.model.parameters()) > 50_000_000:
        warnings.append("synthetic calibration on a full-size model: random images and words are meant for tiny "
                        "models; pass --calib with real data for numbers you can trust")
    if multimodal and without_media:
        warnings.append(
            f"{without_media} of {nsamples} calibration samples carry no image/video/audio although the model is "
            "multimodal; multimodal statistics will see text tokens only"
        )
    samples = sum(int(b["input_ids"].shape[0]) for b in batches)
    return Calibration(batches, spec, fingerprint(batches, spec), samples, warnings, details)
