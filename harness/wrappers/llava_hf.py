"""tamp_llava_hf: lmms-eval's llava_hf (LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision `-hf` checkpoints) for tamp artifacts.

Video requests (a file path from the task) go through the stock wrapper: decord samples `max_frames_num` (32)
frames and the processor takes them. Where torchvision is missing, LLaVA-OneVision's processor is built by
`tamp.processors.load_processor` with the numpy video processor (the stock one needs torchvision).
"""

from __future__ import annotations

from typing import Any

import lmms_eval.models.simple.llava_hf as stock_llava_hf
from lmms_eval.models.simple.llava_hf import DEFAULT_IMAGE_TOKEN, VICUNA_CHAT_TEMPLATE, LlavaHf

from harness.wrappers.common import TampWrapperMixin, distributed, patched, pick_device
from tamp.processors import load_processor


class _ProcessorLoader:
    """Stands in for AutoProcessor inside the stock wrapper's __init__."""

    @staticmethod
    def from_pretrained(path: str, revision: str | None = None, **_: Any) -> Any:

        return load_processor(path, revision=revision)


class TampLlavaHf(TampWrapperMixin, LlavaHf):
    """`pretrained` = an artifact directory (or any llava-hf checkpoint, evaluated as dense)."""

    def __init__(self, pretrained: str, device: str | None = None, device_map: str | None = None,
                 verify_sparsity: bool = True, max_empty_fraction: float = 0.5, **kwargs: Any) -> None:
        self._tamp_before_load(pretrained, verify_sparsity, max_empty_fraction)
        dev = pick_device(device)
        if device_map is None:
            # "" lets the stock wrapper put each accelerate process on its own GPU; transformers 5
            # rejects "" itself, so a single process gets the device name.
            device_map = "" if distributed() else dev
        with patched(stock_llava_hf, "AutoProcessor", _ProcessorLoader):
            super().__init__(pretrained=pretrained, device=dev, device_map=device_map, **kwargs)
        self._tamp_after_load()

    split_until = False  # the stock loop answers with the whole generation

    def _batch_inputs(self, contexts: list[str], visuals: list[list[Any]]) -> dict[str, Any]:
        """The stock loop's prompts (image tokens first unless the context places them, the chat template), for a
        batch at once: left-padded by the processor's tokenizer (the stock wrapper sets left padding)."""
        texts = []
        for context, images in zip(contexts, visuals):
            if DEFAULT_IMAGE_TOKEN not in context and images:
                context = " ".join([DEFAULT_IMAGE_TOKEN] * len(images)) + "\n" + context
            template = self.chat_template or self.tokenizer.chat_template or VICUNA_CHAT_TEMPLATE
            texts.append(self.tokenizer.apply_chat_template([{"role": "user", "content": context}],
                                                            chat_template=template, tokenize=False,
                                                            add_generation_prompt=True))
        images = [image for row in visuals for image in row]
        proc = self._image_processor
        proc.tokenizer.padding_side = "left"
        inputs = proc(text=texts, return_tensors="pt", padding=True, **({"images": images} if images else {}))
        return dict(inputs.to(self._device, self.model.dtype))

    def _mc_prompt(self, context: str, n_images: int) -> str:
        if n_images and "<image>" not in context:
            context = " ".join(["<image>"] * n_images) + "\n" + context
        messages = [{"role": "user", "content": context}]
        template = self.chat_template or self.tokenizer.chat_template or VICUNA_CHAT_TEMPLATE
        return self.tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                  add_generation_prompt=True)

    def _mc_processor(self) -> Any:
        return self._image_processor
