"""Behaviour shared by the tamp_* wrappers, mixed in front of lmms-eval's own wrappers.

What it adds to the stock wrappers:
- the device is chosen by tamp's picker (CUDA when visible, else CPU; one GPU per process under accelerate);
- at load, the zeros of every matrix listed in pruning.json are recounted (`tamp.artifact_check`);
- answers are counted per task and a run whose answers are mostly empty fails loudly: the stock
  wrappers catch generation errors and return "", which would otherwise score as a bad model;
- `loglikelihood` returns `GenerationResult((loss, greedy))`: lmms-eval 0.7.3 turns a plain tuple
  into a string and then fails in multiple-choice scoring (and the stock LLaVA implementation calls
  the processor with an image token but no image, which transformers 5 rejects);
- `clean()` keeps the model: lmms-eval deletes every nn.Module attribute after each evaluation,
  which would make a wrapper single-use;
- the model argument `tamp_key` (the artifact's cache key, which `harness run` passes so that lmms-eval's response
  cache keeps two configurations of one checkpoint path apart) is taken off before the stock wrapper sees it,
  kept as `tamp_key`, and refused when the artifact's own key file names another key;
- the cost of what it evaluated (tamp.inference.cost) is measured; under `accelerate launch` each process
  writes its share to `$TAMP_COST_DIR/rank<N>.json` after every call, for the harness to merge;
- at batch_size > 1, a family that defines `_batch_inputs` generates a batch of image / text requests in one
  left-padded `generate` call (`generate_batched`), token methods included (tamp.inference.sequence_edit re-lays a
  batch whose samples keep different numbers of tokens); requests with other media go one at a time through
  the stock loop. At batch size 1 the stock loop runs, unchanged.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from loguru import logger
from PIL import Image
from tqdm import tqdm

from harness.cache import KEY_FILE
from harness.errors import ArtifactRefused
from harness.evaluate import COST_DIR_ENV, KEY_ARG, batch_cost
from tamp.artifact_check import SparsityCheck, SparsityMismatch, read_pruning_info, verify_sparsity
from tamp.artifacts import PRUNING_JSON, TransformInvalid, write_json_atomic
from tamp.devices import NoCudaDevice, choose_device
from tamp.errors import TampError
from tamp.inference.cost import CostMeter
from tamp.models.loading import checkpoint_problem
from tamp.token_transform import SECTION as TRANSFORM_SECTION
from tamp.token_transform import TokenTransform

# what a user of lmms-eval's CLI can do about a refused artifact (harness words its own)
REFUSED_HINT = "prune it again, or pass verify_sparsity=false in --model_args to evaluate it anyway"


class EmptyAnswers(RuntimeError):
    """Most answers of a task came back empty."""


def distributed() -> bool:
    """True inside `accelerate launch` / torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def pick_device(device: str | None) -> str:
    """None/auto -> this process's GPU when CUDA is visible, else cpu (tamp's picker); the refusal names lmms-eval's
    device= model argument."""
    try:
        return choose_device(device, per_process=True)
    except NoCudaDevice:
        raise ValueError(f"device '{device}' requested but no CUDA device is visible; use device=cpu or leave it "
                         "unset") from None


@contextmanager
def patched(module: Any, name: str, value: Any) -> Iterator[None]:
    """Temporarily replace a module global (used to swap how a stock wrapper builds its processor)."""
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def _flatten(visuals: Any) -> list[Any]:
    if visuals is None:
        return []
    if not isinstance(visuals, (list, tuple)):
        return [visuals]
    out: list[Any] = []
    for v in visuals:
        out.extend(_flatten(v) if isinstance(v, (list, tuple)) else [v])
    return out


class TampWrapperMixin:
    """Put first in the bases: `class TampX(TampWrapperMixin, StockX)`."""

    tamp_info: dict[str, Any] | None
    sparsity_check: SparsityCheck | None
    max_empty_fraction: float
    answer_counts: dict[str, list[int]]
    generation_errors: list[str]

    tamp_key: str | None
    token_transform: TokenTransform | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Reached from each family wrapper's `super().__init__`, after `_tamp_before_load` and before the stock
        wrapper loads any weight: takes `tamp_key` off the arguments (the stock wrappers refuse unknown ones)."""
        self.tamp_key = self._check_key(kwargs.pop(KEY_ARG, None), kwargs.get("pretrained"))
        super().__init__(*args, **kwargs)

    def _check_key(self, given: Any, pretrained: Any) -> str | None:
        """The artifact key the caller named, checked against the key file `harness run`'s cache writes into each
        artifact (an artifact without one, pruned by `tamp prune` or copied without it, cannot be checked)."""
        if given is None:
            return None
        stored = None
        try:
            stored = json.loads((Path(str(pretrained)) / KEY_FILE).read_text()).get("key")
        except (OSError, json.JSONDecodeError, AttributeError):
            pass
        if stored is None:
            return str(given)
        from lmms_eval.utils import handle_arg_string

        if given != stored and given != handle_arg_string(str(stored)):  # lmms-eval reads an all-digit key as a number
            raise ArtifactRefused(f"{KEY_ARG}={given} was asked for, but {pretrained} is the artifact of key {stored}",
                                  f"pass {KEY_ARG}={stored}, or the artifact directory of key {given}")
        return str(stored)

    # ---- loading ----------------------------------------------------------------------------------
    def _tamp_before_load(self, pretrained: str, verify: bool, max_empty_fraction: float) -> None:
        """Read pruning.json first, so a broken artifact fails before minutes of weight loading."""
        self.tamp_pretrained = str(pretrained)
        self.verify_sparsity = bool(verify)
        self.max_empty_fraction = float(max_empty_fraction)
        self.answer_counts = {}
        self.generation_errors = []
        self.sparsity_check = None
        local = Path(str(pretrained))
        problem = checkpoint_problem(local) if local.is_dir() else None
        if problem is not None:  # a truncated safetensors would fail deep inside the stock wrapper
            raise ArtifactRefused(problem, "copy, download or prune it again")
        try:
            self.tamp_info = read_pruning_info(pretrained)
            section = (self.tamp_info or {}).get(TRANSFORM_SECTION)
            self.token_transform = None if section is None else \
                TokenTransform.from_dict(section, local / PRUNING_JSON)
        except SparsityMismatch as exc:
            raise ArtifactRefused(str(exc), REFUSED_HINT) from None
        except TransformInvalid as exc:  # no verify_sparsity=false helps here
            raise ArtifactRefused(exc.reason, "prune it again") from None
        if self.tamp_info is None:
            logger.warning(f"{pretrained} has no pruning.json: evaluating it as a dense model (no sparsity check)")

    def _tamp_after_load(self) -> None:
        """Check the recorded sparsity, re-apply the artifact's token transform, and start the cost meter."""
        self.token_dropper, self.cost_meter = None, None
        transform = self.token_transform  # read and checked before the weights were loaded
        if transform is not None:
            try:
                self.token_dropper = transform.install(self.model)
            except TampError as exc:
                raise ArtifactRefused(f"its token transform cannot be applied: {exc}", REFUSED_HINT) from None
            logger.info(f"{self.tamp_pretrained}: token method {transform.method} {transform.params}")
        self.cost_meter = CostMeter(self.model, self.token_dropper)
        if self.tamp_info is None or not self.verify_sparsity:
            return
        try:
            self.sparsity_check = verify_sparsity(self.model, self.tamp_pretrained, self.tamp_info)
        except SparsityMismatch as exc:
            raise ArtifactRefused(str(exc), REFUSED_HINT) from None
        c = self.sparsity_check
        logger.info(f"{self.tamp_pretrained}: {c.matrices} pruned matrices at {c.sparsity:.2%} sparsity, "
                    "as pruning.json records")

    def take_cost(self) -> dict[str, Any] | None:
        """The cost axis of what ran since the last call (one task), for the run record."""
        meter = getattr(self, "cost_meter", None)
        if meter is None:
            return None
        per_batch = batch_cost([meter.export()])
        summary = meter.take()
        return {**summary, **per_batch} if summary is not None else None

    def _share_cost(self) -> None:
        """Under the harness's data-parallel runs, write this process's measurements (cumulative, atomically)."""
        folder, meter = os.environ.get(COST_DIR_ENV), getattr(self, "cost_meter", None)
        if folder and meter is not None:
            write_json_atomic(Path(folder) / f"rank{os.environ.get('RANK', '0')}.json", meter.export())

    # ---- lmms-eval hooks --------------------------------------------------------------------------
    def clean(self) -> None:
        """Free cached memory but keep the model, so one wrapper serves several evaluations."""
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def generate_until(self, requests: list[Any]) -> list[Any]:
        errors: list[str] = []
        model = self.model
        original = model.generate

        def recording_generate(*args: Any, **kwargs: Any) -> Any:
            try:
                return original(*args, **kwargs)
            except Exception as exc:  # recorded, then re-raised for the stock wrapper to handle
                errors.append(f"{type(exc).__name__}: {exc}")
                raise

        model.generate = recording_generate
        try:
            results = self.generate_batched(requests) if self._batches() else \
                super().generate_until(requests)  # type: ignore[misc]
        finally:
            model.__dict__.pop("generate", None)
        self.generation_errors.extend(errors)
        self._share_cost()
        for req, out in zip(requests, results):
            text = getattr(out, "text", out)
            counts = self.answer_counts.setdefault(req.task_name, [0, 0])
            counts[1] += 1
            counts[0] += int(not isinstance(text, str) or not text.strip())
        self._fail_on_empty_answers(errors)
        return results

    # ---- batched generation ----------------------------------------------------------------------
    def _batches(self) -> bool:
        """Generate in batches: batch_size > 1 and the family knows how to build a batch's inputs."""
        return int(getattr(self, "batch_size_per_gpu", 1) or 1) > 1 and \
            type(self)._batch_inputs is not TampWrapperMixin._batch_inputs

    def _batch_inputs(self, contexts: list[str], visuals: list[list[Any]]) -> dict[str, Any]:
        """The processor's left-padded inputs for a batch of prompts and their images (per family)."""
        raise NotImplementedError

    def _batch_generate_kwargs(self, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
        """`generate`'s arguments for a task's generation kwargs, as the family's stock loop passes them."""
        temperature = float(gen_kwargs.get("temperature", 0) or 0)
        return {"max_new_tokens": int(gen_kwargs.get("max_new_tokens", 1024)), "do_sample": temperature > 0,
                "temperature": temperature if temperature > 0 else None,
                "top_p": gen_kwargs.get("top_p") if temperature > 0 else None,
                "num_beams": int(gen_kwargs.get("num_beams", 1) or 1)}

    # whether the family's stock loop cuts an answer at the task's `until` strings (llava_hf's does not)
    split_until = True

    def generate_batched(self, requests: list[Any]) -> list[str]:
        """lmms-eval's loop at batch_size > 1: requests sorted longest first and grouped by generation kwargs
        (as the stock wrappers do), each batch one `generate` call; a batch with non-image media goes request by
        request through the stock loop."""
        from lmms_eval import utils

        stock = super().generate_until  # type: ignore[misc]  # (zero-argument super() fails inside a generator)
        by_args = {id(r.args): r for r in requests}
        order = utils.Collator([r.args for r in requests], lambda x: (-len(self.tokenizer.encode(x[0])), x[0]),
                               grouping=True)
        answers: list[str] = []
        pbar = tqdm(total=len(requests), disable=self.rank != 0, desc="Model Responding (batched)")
        for chunk in order.get_batched(n=self.batch_size, batch_fn=None):
            contexts, all_kwargs, doc_to_visual, doc_ids, tasks, splits = zip(*chunk)
            visuals = [_flatten(doc_to_visual[0](self.task_dict[t][s][d])) if doc_to_visual[0] else []
                       for d, t, s in zip(doc_ids, tasks, splits)]
            if any(not isinstance(v, Image.Image) for vs in visuals for v in vs):
                saved = getattr(self, "batch_size_per_gpu", None)  # the stock loops take such media one at a time
                if saved is not None:
                    self.batch_size_per_gpu = 1
                try:
                    answers.extend(stock([by_args[id(a)]])[0] for a in chunk)
                finally:
                    if saved is not None:
                        self.batch_size_per_gpu = saved
                pbar.update(len(chunk))
                continue
            gen_kwargs = dict(all_kwargs[0])
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            try:
                inputs = self._batch_inputs(list(contexts), visuals)
                with torch.inference_mode():
                    out = self.model.generate(**inputs, **self._batch_generate_kwargs(gen_kwargs),
                                              use_cache=bool(getattr(self, "use_cache", True)),
                                              pad_token_id=self._pad_id(), eos_token_id=self._eos_id())
                texts = self.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            except Exception as exc:  # answered "", as the stock loops do; recorded, and the empties are counted
                logger.error(f"{type(self).__name__}: batched generation failed: {type(exc).__name__}: {exc}")
                self.generation_errors.append(f"{type(exc).__name__}: {exc}")
                texts = [""] * len(chunk)
            for context, text in zip(contexts, texts):
                for stop in until if self.split_until else []:
                    if stop and stop in text:
                        text = text.split(stop, 1)[0]
                answers.append(text)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            pbar.update(len(chunk))
        pbar.close()
        return order.get_original(answers)

    def _pad_id(self) -> int:
        """What finished answers are padded with (llava_hf's stock loop: its end-of-text token)."""
        return self._eos_id()

    def _eos_id(self) -> int:
        return int(getattr(self, "eot_token_id", None) or self.tokenizer.eos_token_id)

    def _fail_on_empty_answers(self, errors: list[str]) -> None:
        for task, (empty, total) in self.answer_counts.items():
            if total and empty / total > self.max_empty_fraction:
                hint = f"; first generation error: {errors[0]}" if errors else ""
                raise EmptyAnswers(
                    f"{empty} of {total} answers to task '{task}' are empty (more than {self.max_empty_fraction:.0%}): "
                    f"the model or its wrapper fails to generate{hint}. Pass max_empty_fraction=1 to accept such a run")

    def loglikelihood(self, requests: list[Any]) -> list[Any]:
        """Mean negative log-likelihood of each continuation (lower = more likely: lmms-eval takes argmin)."""
        from lmms_eval.api.instance import GenerationResult

        out = []
        for req in tqdm(requests, disable=self.rank != 0, desc="Scoring choices"):
            ctx, target, doc_to_visual, doc_id, task, split = req.args
            doc = self.task_dict[task][split][doc_id]
            continuation = target if isinstance(target, str) else str(target(doc))
            visuals = _flatten(doc_to_visual(doc)) if doc_to_visual is not None else []
            if any(not isinstance(v, Image.Image) for v in visuals):
                raise NotImplementedError(f"{type(self).__name__}: loglikelihood supports image and text inputs only")
            loss, greedy = self._continuation_loss(self._mc_prompt(ctx, len(visuals)), continuation, visuals)
            # GenerationResult: lmms-eval 0.7.3 would turn a bare (loss, greedy) tuple into a string
            out.append(GenerationResult(text=(loss, greedy)))
        self._share_cost()
        return out

    # ---- per family --------------------------------------------------------------------------------
    def _mc_prompt(self, context: str, n_images: int) -> str:
        """The chat-formatted prompt that ends where the answer starts."""
        raise NotImplementedError

    def _mc_processor(self) -> Any:
        raise NotImplementedError

    @torch.inference_mode()
    def _continuation_loss(self, prompt: str, continuation: str, images: list[Image.Image]) -> tuple[float, bool]:
        proc = self._mc_processor()
        kwargs = {"images": images} if images else {}
        full = proc(text=[prompt + continuation], return_tensors="pt", **kwargs)
        ctx_len = proc(text=[prompt], return_tensors="pt", **kwargs)["input_ids"].shape[1]
        dtype = self.model.dtype
        inputs = {k: (v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device))
                  for k, v in full.items() if isinstance(v, torch.Tensor)}
        ids = inputs["input_ids"]
        if ids.shape[1] <= ctx_len:
            raise ValueError(f"continuation {continuation!r} adds no token to the prompt")
        logits = self.model(**inputs).logits[:, ctx_len - 1 : -1].float()
        target = ids[:, ctx_len:]
        logp = torch.log_softmax(logits, dim=-1)
        token_logp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        return float(-token_logp.mean()), bool((logp.argmax(-1) == target).all())
