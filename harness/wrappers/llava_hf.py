"""tamp_llava_hf: lmms-eval's llava_hf (LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision `-hf` checkpoints) for tamp artifacts."""

from __future__ import annotations

from typing import Any

from lmms_eval.models.simple.llava_hf import VICUNA_CHAT_TEMPLATE, LlavaHf

from harness.wrappers.common import TampWrapperMixin, distributed, pick_device


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
        super().__init__(pretrained=pretrained, device=dev, device_map=device_map, **kwargs)
        self._tamp_after_load()

    def _mc_prompt(self, context: str, n_images: int) -> str:
        if n_images and "<image>" not in context:
            context = " ".join(["<image>"] * n_images) + "\n" + context
        messages = [{"role": "user", "content": context}]
        template = self.chat_template or self.tokenizer.chat_template or VICUNA_CHAT_TEMPLATE
        return self.tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                  add_generation_prompt=True)

    def _mc_processor(self) -> Any:
        return self._image_processor
