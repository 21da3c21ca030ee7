"""tamp_gemma3: lmms-eval's gemma3 (Gemma 3 image-text checkpoints) for tamp artifacts.

The stock wrapper builds its processor with Qwen's pixel bounds (`min_pixels` / `max_pixels`), which Gemma 3's
processor has no use for: the processor is built by `tamp.processors.load_processor` without them. Images go in
as the stock wrapper sends them (one view each; pan-and-scan stays as the checkpoint's processor config says).
Multiple-choice tasks are scored by the mixin's `loglikelihood`, which the stock wrapper lacks. Batches go through
the stock loop (the processor on a batch of conversations, padded to a multiple of 8), with left padding set here;
a token method's samples may keep different numbers of tokens (tamp.inference.sequence_edit re-lays the batch with
each sample's windows and image blocks).
"""

from __future__ import annotations

from typing import Any

import lmms_eval.models.simple.gemma3 as stock_gemma3
from lmms_eval.models.simple.gemma3 import Gemma3

from harness.wrappers.common import TampWrapperMixin, patched, pick_device
from tamp.processors import load_processor


class _ProcessorLoader:
    """Stands in for AutoProcessor inside the stock wrapper's __init__ (the pixel bounds are Qwen's, not Gemma's)."""

    @staticmethod
    def from_pretrained(path: str, revision: str | None = None, **_: Any) -> Any:
        return load_processor(path, revision=revision)


class TampGemma3(TampWrapperMixin, Gemma3):
    """`pretrained` = an artifact directory (or any Gemma 3 image-text checkpoint, evaluated as dense)."""

    def __init__(self, pretrained: str, device: str | None = None, device_map: str | None = None,
                 verify_sparsity: bool = True, max_empty_fraction: float = 0.5, **kwargs: Any) -> None:
        self._tamp_before_load(pretrained, verify_sparsity, max_empty_fraction)
        dev = pick_device(device)
        with patched(stock_gemma3, "AutoProcessor", _ProcessorLoader):
            super().__init__(pretrained=pretrained, device=dev, device_map=device_map or dev, **kwargs)
        self.processor.tokenizer.padding_side = "left"  # the stock loop generates a padded batch
        self._tamp_after_load()

    def _mc_prompt(self, context: str, n_images: int) -> str:
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": context}]
        messages = [{"role": "system", "content": [{"type": "text", "text": self.system_prompt}]},
                    {"role": "user", "content": content}]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _mc_processor(self) -> Any:
        return self.processor
