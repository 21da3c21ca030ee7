"""tamp_internvl3: InternVL3 `-hf` checkpoints (transformers' InternVLForConditionalGeneration) for tamp artifacts.

Built on lmms-eval 0.7.3's `internvl_hf` chat model, which imports with what lock/ pins (its simple `internvl3`
needs torchvision and remote code): its loading is kept (accelerate, device map, `min_patches` / `max_patches`,
bfloat16), with the processor built by `tamp.processors.load_processor` (the stock one needs torchvision for
its video part). Our wrappers are simple models, so the request loop is written here for simple requests
(context, generation arguments, `doc_to_visual`): each image item goes into the chat template, where the
processor expands it into `<img>`, 256 context tokens per tile (up to `max_patches` crops and a thumbnail), `</img>`.
At --batch-size N > 1 a batch of requests is one left-padded `generate` call (TampWrapperMixin.generate_batched:
the processor takes the batch's prompts and its images as one flat list, each image split into its own number of
tiles); at 1 the loop below answers one request at a time. Images only: video requests are refused (see
tamp/families/internvl3.py).
"""

from __future__ import annotations

import inspect
from typing import Any

import lmms_eval.models.chat.internvl_hf as stock_internvl
from lmms_eval.models.chat.internvl_hf import InternVLHf
from PIL import Image
from tqdm import tqdm

from harness.evaluate import KEY_ARG
from harness.wrappers.common import TampWrapperMixin, _flatten, distributed, patched, pick_device
from tamp.processors import load_processor

IMAGE_PLACEHOLDER = "<image>"  # what some lmms-eval tasks write into the context where the image goes


class _ProcessorLoader:
    """Stands in for AutoProcessor inside the stock wrapper's __init__."""

    @staticmethod
    def from_pretrained(path: str, revision: str | None = None, **_: Any) -> Any:
        return load_processor(path, revision=None if revision == "main" else revision)


class InternVLSimple(InternVLHf):
    """The stock chat wrapper's loading, with a loop for simple requests (one per `generate` call) and the prompts;
    a class of its own so that TampWrapperMixin.generate_until, first in TampInternVL3's bases, reaches it."""

    is_simple = True
    default_max_new_tokens: int

    # ---- prompts --------------------------------------------------------------------------------------
    def _prompt(self, context: str, n_images: int) -> str:
        """The chat-formatted prompt: the images first (or where the task wrote `<image>`), then the question."""
        parts = context.split(IMAGE_PLACEHOLDER) if IMAGE_PLACEHOLDER in context else [""] * n_images + [context]
        if len(parts) - 1 != n_images:
            raise ValueError(f"the context names {len(parts) - 1} images but the request has {n_images}")
        content: list[dict[str, Any]] = []
        for i, text in enumerate(parts):
            if text.strip():
                content.append({"type": "text", "text": text.strip()})
            if i < n_images:
                content.append({"type": "image"})
        messages = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    # ---- lmms-eval: simple requests -------------------------------------------------------------------
    def generate_until(self, requests: list[Any]) -> list[str]:
        """Reached through TampWrapperMixin.generate_until (which counts empty answers) at batch size 1; greedy
        unless the task asks for a temperature, cut at the task's `until` strings."""
        out: list[str] = []
        for req in tqdm(requests, disable=self.rank != 0, desc="Model Responding"):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            doc = self.task_dict[task][split][doc_id]
            visuals = _flatten(doc_to_visual(doc)) if doc_to_visual is not None else []
            if any(not isinstance(v, Image.Image) for v in visuals):
                raise NotImplementedError("tamp_internvl3 takes images and text only (no video: InternVL's video "
                                          "processor needs torchvision); choose image tasks")
            out.append(self._generate_one(context, dict(gen_kwargs), [v.convert("RGB") for v in visuals]))
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), out[-1])
        return out

    def _generate_one(self, context: str, gen_kwargs: dict[str, Any], images: list[Image.Image]) -> str:
        until = gen_kwargs.pop("until", None)
        until = [until] if isinstance(until, str) else list(until or [])
        text = self._prompt(context, len(images))
        kwargs: dict[str, Any] = {"min_patches": self.min_patches, "max_patches": self.max_patches} if images else {}
        inputs = self.processor(text=[text], images=images or None, return_tensors="pt", **kwargs)
        inputs = inputs.to(self.device, self.model.dtype)
        temperature = float(gen_kwargs.get("temperature", 0) or 0)
        sample = {"do_sample": True, "temperature": temperature, "top_p": gen_kwargs.get("top_p")} \
            if temperature > 0 else {"do_sample": False}
        try:
            generated = self.model.generate(
                **inputs, max_new_tokens=int(gen_kwargs.get("max_new_tokens", self.default_max_new_tokens)),
                num_beams=int(gen_kwargs.get("num_beams", 1) or 1), pad_token_id=self.pad_token_id,
                eos_token_id=self.eot_token_id, use_cache=self.use_cache, **sample)
        except Exception:  # recorded by TampWrapperMixin.generate_until; an empty answer, as the stock loop gives
            return ""
        answer = self.tokenizer.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        for stop in until:
            if stop:
                answer = answer.split(stop)[0]
        return answer


class TampInternVL3(TampWrapperMixin, InternVLSimple):
    """`pretrained` = an artifact directory (or any InternVL `-hf` checkpoint, evaluated as dense)."""

    def __init__(self, pretrained: str, device: str | None = None, device_map: str | None = None,
                 verify_sparsity: bool = True, max_empty_fraction: float = 0.5, max_new_tokens: int = 1024,
                 **kwargs: Any) -> None:
        stock = set(inspect.signature(InternVLHf.__init__).parameters) - {"self", "kwargs"}
        unknown = sorted(set(kwargs) - stock - {KEY_ARG})
        if unknown:  # the stock __init__ would swallow them silently
            raise ValueError(f"tamp_internvl3: unknown model_args {', '.join(unknown)}; it takes "
                             f"{', '.join(sorted(stock | {'verify_sparsity', 'max_empty_fraction', 'max_new_tokens'}))}")
        self._tamp_before_load(pretrained, verify_sparsity, max_empty_fraction)
        dev = pick_device(device)
        self.default_max_new_tokens = int(max_new_tokens)
        batch = int(kwargs.pop("batch_size", 1) or 1)
        if batch < 1:
            raise ValueError(f"tamp_internvl3: batch_size must be at least 1, got {batch}")
        with patched(stock_internvl, "AutoProcessor", _ProcessorLoader):  # the stock __init__ asserts batch size 1
            super().__init__(pretrained=pretrained, device=dev, device_map=device_map or ("" if distributed() else dev),
                             batch_size=1, **kwargs)
        self.batch_size_per_gpu = batch  # served by generate_batched (the stock loop, which asserts 1, never runs)
        self._tamp_after_load()

    def _batch_inputs(self, contexts: list[str], visuals: list[list[Any]]) -> dict[str, Any]:
        """The loop's prompts for a batch at once, left-padded; the images as one flat list in prompt order (the
        processor splits each into its own tiles and counts its context tokens)."""
        images = [[v.convert("RGB") for v in row] for row in visuals]
        texts = [self._prompt(c, len(row)) for c, row in zip(contexts, images)]
        flat = [image for row in images for image in row]
        kwargs: dict[str, Any] = {"min_patches": self.min_patches, "max_patches": self.max_patches} if flat else {}
        self.processor.tokenizer.padding_side = "left"
        inputs = self.processor(text=texts, images=flat or None, return_tensors="pt", padding=True, **kwargs)
        return dict(inputs.to(self.device, self.model.dtype))

    def _batch_generate_kwargs(self, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
        """As the one-request loop: its default answer length."""
        return super()._batch_generate_kwargs({"max_new_tokens": self.default_max_new_tokens, **gen_kwargs})

    def _pad_id(self) -> int:
        return int(self.pad_token_id)

    def _mc_prompt(self, context: str, n_images: int) -> str:
        return self._prompt(context, n_images)

    def _mc_processor(self) -> Any:
        return self.processor
