"""`--calib` spec -> Calibration: LLaVA JSON + media (images, videos, audio), text:FILE[,FILE...], or synthetic."""

from __future__ import annotations

from tamp.calibration.batches import Calibration, fingerprint
from tamp.calibration.llava_json import llava_batches
from tamp.calibration.synthetic import synthetic_batches
from tamp.errors import TampError
from tamp.models.loading import LoadedModel, _is_multimodal

TEXT_BATCH_SIZE = 8  # equal-length text segments are run 8 at a time; images one sample at a time


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
        raise TampError(f"unknown --calib '{spec}': give a LLaVA-format .json[:IMAGE_DIR], text:FILE[,FILE...] or synthetic")
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
