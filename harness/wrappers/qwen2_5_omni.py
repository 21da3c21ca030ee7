"""tamp_qwen2_5_omni: Qwen2.5-Omni (text output) for tamp artifacts, written here rather than subclassed.

lmms-eval 0.7.3's stock `qwen2_5_omni` cannot serve as a base: it imports moviepy and qwen-omni-utils at
module level, always loads the processor of "Qwen/Qwen2.5-Omni-7B" from the Hub whatever `pretrained` is, and
calls `Qwen2_5OmniForConditionalGeneration.generate`, which in transformers 5 needs the talker even for text.
This wrapper keeps its prompt layout (system prompt, then the media items, then the question) and:
- loads the processor from the artifact (`tamp.processors.load_processor`: works without torchvision);
- decodes a video path with `tamp.calibration.media` (frames sampled as the processor expects, fps 2) and
  resamples audio dicts ({"array", "sampling_rate"}) to the feature extractor's rate;
- generates text with the thinker (greedy unless the task asks for a temperature), talker disabled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from lmms_eval.api.model import lmms
from loguru import logger
from PIL import Image
from tqdm import tqdm

from harness.wrappers.common import TampWrapperMixin, _flatten, distributed, pick_device
from tamp.calibration.media import decode_video
from tamp.processors import load_processor

DEFAULT_SYSTEM_PROMPT = ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of "
                         "perceiving auditory and visual inputs, as well as generating text and speech.")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif")


class _Qwen2_5OmniCore(lmms):
    """The evaluation loop itself; `TampQwen2_5Omni` adds tamp's checks in front."""

    def __init__(self, pretrained: str, device: str, device_map: str | None = None, max_new_tokens: int = 256,
                 system_prompt: str = DEFAULT_SYSTEM_PROMPT, batch_size: int = 1, **kwargs: Any) -> None:
        super().__init__()
        if kwargs:
            raise ValueError(f"tamp_qwen2_5_omni: unexpected model_args {sorted(kwargs)}")
        if int(batch_size) < 1:
            raise ValueError(f"tamp_qwen2_5_omni: batch_size must be at least 1, got {batch_size}")
        self._batch_size = int(batch_size)
        from transformers import Qwen2_5OmniForConditionalGeneration


        accelerator = Accelerator()
        self._device = torch.device(device)
        self._model = Qwen2_5OmniForConditionalGeneration.from_pretrained(
            pretrained, dtype="auto", device_map=device_map or device).eval()
        self._model.disable_talker()
        self.processor = load_processor(pretrained)
        self.processor.tokenizer.padding_side = "left"  # a batch is left-padded, as generation needs
        self._tokenizer = self.processor.tokenizer
        self.system_prompt = system_prompt
        self.default_max_new_tokens = int(max_new_tokens)
        self._rank = accelerator.local_process_index if distributed() else 0
        self._world_size = accelerator.num_processes if distributed() else 1

    # lmms-eval reads these
    @property
    def model(self) -> torch.nn.Module:
        return self._model

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def batch_size_per_gpu(self) -> int:
        return self._batch_size

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    # ---- inputs --------------------------------------------------------------------------------------
    def _media(self, visuals: list[Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Chat content items and processor kwargs for one request's visuals (images, video paths, audio dicts)."""

        items: list[dict[str, Any]] = []
        images: list[Image.Image] = []
        videos: list[np.ndarray] = []
        metadata: list[dict[str, Any]] = []
        audio: list[np.ndarray] = []
        rate = int(self.processor.feature_extractor.sampling_rate)
        for visual in visuals:
            if isinstance(visual, Image.Image):
                images.append(visual.convert("RGB"))
                items.append({"type": "image"})
            elif isinstance(visual, (str, Path)) and str(visual).lower().endswith(VIDEO_SUFFIXES):
                frames, meta = decode_video(Path(visual), self.processor)
                videos.append(frames)
                metadata.append(meta)
                items.append({"type": "video"})
            elif isinstance(visual, dict) and "array" in visual:
                wave = np.asarray(visual["array"], dtype=np.float32)
                if wave.ndim > 1:
                    wave = wave.mean(axis=-1 if wave.shape[-1] <= 8 else 0)
                source_rate = int(visual.get("sampling_rate", rate))
                if source_rate != rate:
                    import librosa

                    wave = librosa.resample(wave, orig_sr=source_rate, target_sr=rate).astype(np.float32)
                audio.append(wave)
                items.append({"type": "audio"})
            else:
                raise ValueError(f"tamp_qwen2_5_omni: unsupported visual of type {type(visual).__name__}")
        kwargs: dict[str, Any] = {}
        if images:
            kwargs["images"] = images
        if videos:
            kwargs["videos"] = videos
            kwargs["video_metadata"] = metadata
        if audio:
            kwargs["audio"] = audio
            kwargs["sampling_rate"] = rate
        return items, kwargs

    def _prompt(self, items: list[dict[str, Any]], context: str) -> str:
        messages = [{"role": "system", "content": [{"type": "text", "text": self.system_prompt}]},
                    {"role": "user", "content": [*items, {"type": "text", "text": context}]}]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    # ---- lmms-eval API -------------------------------------------------------------------------------
    def generate_until(self, requests: list[Any]) -> list[str]:
        """Requests in order, `batch_size` at a time: one left-padded `generate` per batch of requests that share
        their generation kwargs (media of every kind: the processor takes each kind's list in prompt order)."""
        answers: list[str] = []
        pbar = tqdm(total=len(requests), disable=self.rank != 0, desc="Model Responding")
        start = 0
        while start < len(requests):
            first = dict(requests[start].args[1])
            end = start + 1
            while end < len(requests) and end - start < self.batch_size and dict(requests[end].args[1]) == first:
                end += 1
            answers.extend(self._answer([r.args for r in requests[start:end]]))
            pbar.update(end - start)
            start = end
        pbar.close()
        return answers

    def _answer(self, batch: list[tuple]) -> list[str]:
        """One `generate` for requests sharing their generation kwargs."""
        gen_kwargs = dict(batch[0][1])
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        try:
            prompts, media = [], {}
            for context, _, doc_to_visual, doc_id, task, split in batch:
                visuals = _flatten(doc_to_visual(self.task_dict[task][split][doc_id])) if doc_to_visual else []
                items, own = self._media(visuals)
                prompts.append(self._prompt(items, context))
                for key, value in own.items():  # each kind's list grows in prompt order; the rate is one value
                    media[key] = media.get(key, []) + value if isinstance(value, list) else value
            inputs = self.processor(text=prompts, return_tensors="pt", padding=True, **media)
            inputs = {k: (v.to(self.device, self.model.dtype) if v.is_floating_point() else v.to(self.device))
                      for k, v in inputs.items() if isinstance(v, torch.Tensor)}
            temperature = float(gen_kwargs.get("temperature", 0) or 0)
            with torch.inference_mode():
                out = self.model.thinker.generate(
                    **inputs, max_new_tokens=int(gen_kwargs.get("max_new_tokens", self.default_max_new_tokens)),
                    do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                    top_p=gen_kwargs.get("top_p") if temperature > 0 else None,
                    num_beams=int(gen_kwargs.get("num_beams", 1) or 1),
                    pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id)
            texts = self.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        except Exception as exc:  # recorded and answered "", as the stock wrappers do; the mixin counts empties
            where = ", ".join(f"{task}/{doc_id}" for _, _, _, doc_id, task, _ in batch)
            logger.error(f"tamp_qwen2_5_omni: generation failed for {where}: {type(exc).__name__}: {exc}")
            self.generation_errors.append(f"{type(exc).__name__}: {exc}")
            texts = [""] * len(batch)
        answers = []
        for (context, *_), text in zip(batch, texts):
            for stop in until:
                if stop and stop in text:
                    text = text.split(stop, 1)[0]
            answers.append(text)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return answers

    def loglikelihood(self, requests: list[Any]) -> list[Any]:
        raise NotImplementedError("tamp_qwen2_5_omni serves generation tasks only")

    def generate_until_multi_round(self, requests: list[Any]) -> list[str]:
        raise NotImplementedError("tamp_qwen2_5_omni serves single-round generation only")


class TampQwen2_5Omni(TampWrapperMixin, _Qwen2_5OmniCore):
    """`pretrained` = an artifact directory (or any Qwen2.5-Omni checkpoint, evaluated as dense)."""

    def __init__(self, pretrained: str, device: str | None = None, device_map: str | None = None,
                 verify_sparsity: bool = True, max_empty_fraction: float = 0.5, **kwargs: Any) -> None:
        self._tamp_before_load(pretrained, verify_sparsity, max_empty_fraction)
        super().__init__(pretrained=pretrained, device=pick_device(device), device_map=device_map, **kwargs)
        self._tamp_after_load()

    def loglikelihood(self, requests: list[Any]) -> list[Any]:
        raise NotImplementedError("tamp_qwen2_5_omni serves generation tasks only")
