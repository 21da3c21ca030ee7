"""tamp_smolvlm: SmolVLM (Idefics3 architecture) artifacts in lmms-eval, as a simple (non-chat) model.

lmms-eval 0.7.3 has no simple SmolVLM wrapper; its `idefics2` one imports torchvision at module level and loads
Idefics2 only, so this one is written on lmms-eval's `lmms` base and our `TampWrapperMixin`. It serves image and text
requests: the prompt is SmolVLM's chat template with an image item per picture (unless the task's context places
`<image>` itself), the processor (`tamp.processors.load_processor`: works without num2words and torchvision) splits
each image into tiles plus the global image, and generation is greedy unless the task asks for sampling. At
--batch-size N > 1 a batch is one left-padded `generate` call (TampWrapperMixin.generate_batched: the processor takes
the prompts and one list of images per prompt, each image split into its own number of tiles); at 1, one request per
call. Video requests are refused in one line (SmolVLM's video prompts need num2words and torchvision).
"""

from __future__ import annotations

from typing import Any

import torch
from lmms_eval.api.model import lmms
from PIL import Image
from tqdm import tqdm

from harness.wrappers.common import TampWrapperMixin, pick_device
from tamp.processors import load_processor

DEFAULT_MAX_NEW_TOKENS = 128


def _images(visuals: Any) -> list[Image.Image]:
    """A document's visuals as a flat list of RGB images; anything else (a video path, audio) is refused."""
    flat: list[Any] = []
    stack = [visuals] if not isinstance(visuals, (list, tuple)) else list(visuals)
    while stack:
        item = stack.pop(0)
        if isinstance(item, (list, tuple)):
            stack[:0] = list(item)
        elif item is not None:
            flat.append(item)
    if any(not isinstance(v, Image.Image) for v in flat):
        kinds = sorted({type(v).__name__ for v in flat if not isinstance(v, Image.Image)})
        raise NotImplementedError(f"tamp_smolvlm takes images and text only, not {', '.join(kinds)} "
                                  "(SmolVLM's video prompts need num2words and torchvision)")
    return [v.convert("RGB") for v in flat]


class SmolVLMSimple(lmms):
    """A plain SmolVLM model in lmms-eval: greedy generation over image + text prompts, one request per call (the
    batched loop is TampWrapperMixin's)."""

    def __init__(self, pretrained: str = "HuggingFaceTB/SmolVLM-256M-Instruct", revision: str | None = None,
                 device: str | None = None, dtype: str = "auto", batch_size: int = 1,
                 attn_implementation: str | None = None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 **kwargs: Any) -> None:
        super().__init__()
        if kwargs:
            raise ValueError(f"tamp_smolvlm: unknown model arguments {sorted(kwargs)}")
        if int(batch_size) < 1:
            raise ValueError(f"tamp_smolvlm: batch_size must be at least 1, got {batch_size}")
        self.batch_size_per_gpu = int(batch_size)  # served by TampWrapperMixin.generate_batched when above 1
        from accelerate import Accelerator
        from transformers import SmolVLMForConditionalGeneration

        accelerator = Accelerator()
        if accelerator.num_processes > 1:
            device = f"cuda:{accelerator.local_process_index}"
            self.accelerator = accelerator
            self._rank, self._world_size = accelerator.local_process_index, accelerator.num_processes
        self._device = torch.device(device or "cpu")
        loaded_dtype = dtype if dtype == "auto" else getattr(torch, str(dtype))
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        self._model = SmolVLMForConditionalGeneration.from_pretrained(
            pretrained, revision=revision, dtype=loaded_dtype, **extra).to(self._device).eval()
        self.processor = load_processor(pretrained, revision=revision)
        self._tokenizer = self.processor.tokenizer
        self.max_new_tokens = int(max_new_tokens)

    @property
    def model(self) -> Any:
        return self._model

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    def _prompt(self, context: str, n_images: int) -> str:
        """SmolVLM's chat prompt, up to where the answer starts: one image item per picture, then the question."""
        if n_images and "<image>" in context:  # the task placed its images itself
            pieces = context.split("<image>")
            content: list[dict[str, Any]] = [{"type": "text", "text": pieces[0]}] if pieces[0] else []
            for piece in pieces[1:]:
                content += [{"type": "image"}] + ([{"type": "text", "text": piece}] if piece else [])
        else:
            content = [{"type": "image"}] * n_images + [{"type": "text", "text": context}]
        messages = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _inputs(self, prompt: str, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        kwargs = {"images": [images]} if images else {}
        batch = self.processor(text=[prompt], return_tensors="pt", **kwargs)
        dtype = self.model.dtype
        return {k: (v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device))
                for k, v in batch.items() if isinstance(v, torch.Tensor)}

    @torch.inference_mode()
    def generate_until(self, requests: list[Any]) -> list[str]:
        out: list[str] = []
        for req in tqdm(requests, disable=self.rank != 0, desc="Model Responding"):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            doc = self.task_dict[task][split][doc_id]
            images = _images(doc_to_visual(doc)) if doc_to_visual is not None else []
            gen = dict(gen_kwargs or {})
            until = gen.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(gen.pop("temperature", 0) or 0)
            settings = self._settings(temperature, gen)
            inputs = self._inputs(self._prompt(context, len(images)), images)
            ids = self.model.generate(**inputs, **settings, pad_token_id=self.tokenizer.pad_token_id)
            text = self.tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            for stop in until:
                text = text.split(stop)[0] if stop else text
            out.append(text.strip())
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return out

    def _settings(self, temperature: float, gen: dict[str, Any]) -> dict[str, Any]:
        """`generate`'s sampling arguments for a task's generation kwargs (greedy unless it asks for a temperature)."""
        settings: dict[str, Any] = {"max_new_tokens": int(gen.get("max_new_tokens", self.max_new_tokens)),
                                    "do_sample": temperature > 0}
        if temperature > 0:
            settings.update(temperature=temperature, top_p=float(gen.get("top_p", None) or 1.0))
        return settings

    def loglikelihood(self, requests: list[Any]) -> list[Any]:
        raise NotImplementedError("SmolVLMSimple: loglikelihood comes with tamp_smolvlm")

    def generate_until_multi_round(self, requests: list[Any]) -> list[str]:
        raise NotImplementedError("tamp_smolvlm serves single-round generation and multiple-choice tasks only")


class TampSmolVLM(TampWrapperMixin, SmolVLMSimple):
    """`pretrained` = an artifact directory (or any SmolVLM checkpoint, evaluated as dense)."""

    def __init__(self, pretrained: str, device: str | None = None, verify_sparsity: bool = True,
                 max_empty_fraction: float = 0.5, **kwargs: Any) -> None:
        self._tamp_before_load(pretrained, verify_sparsity, max_empty_fraction)
        kwargs.pop("device_map", None)  # one device per process: the model is moved there whole
        super().__init__(pretrained=pretrained, device=pick_device(device), **kwargs)
        self._tamp_after_load()

    # ---- batches (TampWrapperMixin.generate_batched) --------------------------------------------------
    def _batch_inputs(self, contexts: list[str], visuals: list[list[Any]]) -> dict[str, Any]:
        """The one-request prompts for a batch at once, left-padded; one list of images per prompt."""
        images = [_images(row) for row in visuals]
        texts = [self._prompt(c, len(row)) for c, row in zip(contexts, images)]
        self.processor.tokenizer.padding_side = "left"
        kwargs = {"images": images} if any(images) else {}
        batch = self.processor(text=texts, return_tensors="pt", padding=True, **kwargs)
        dtype = self.model.dtype
        return {k: (v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device))
                for k, v in batch.items() if isinstance(v, torch.Tensor)}

    def _batch_generate_kwargs(self, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
        return self._settings(float(gen_kwargs.get("temperature", 0) or 0), gen_kwargs)

    def _pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def _eos_id(self) -> Any:
        """What the one-request loop ends at: the generation config's end of sequence (an id or a list of them)."""
        return self.model.generation_config.eos_token_id

    def generate_batched(self, requests: list[Any]) -> list[str]:
        """The mixin's batched loop, answers stripped as the one-request loop strips them."""
        return [a.strip() for a in super().generate_batched(requests)]

    def _mc_prompt(self, context: str, n_images: int) -> str:
        return self._prompt(context, n_images)

    def _mc_processor(self) -> Any:
        return self.processor
