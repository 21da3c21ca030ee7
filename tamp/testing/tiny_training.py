"""The training recipe of the trained tiny LLaVA-NeXT: 0.95 M parameters that answer picture questions.

Random tiny models score 0 on every task, so they cannot show that pruning hurts. This recipe trains a
small model of the real LLaVA-NeXT architecture (CLIP vision tower, two-layer projector, Llama decoder; the
tokenizer, processor and chat template of ``tamp.testing.tiny``'s ``llava-next``) on generated pictures
(:mod:`tamp.calibration.pictures`), on the CPU in about four minutes with one thread (one thread: the same
floating-point sums on every machine, whatever its core count).

Deterministic: seeded initialisation, a seeded data stream in a fixed order, deterministic torch
algorithms and a fixed thread count, so two builds on one machine give byte-identical weights
(``training.json`` records their sha256). Another CPU (AVX2 instead of AVX-512, another MKL path) or torch
version may differ in the last bits, which is why ``tiny-trained-llava-next`` loads the build shipped in the
package (:mod:`tamp.models.shipped`) and this recipe runs only when asked (``tamp build-tiny --trained``, and
the tests of the recipe). The build is written into a temporary folder and renamed into place, so an
interrupted build never leaves a half-written model behind.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import transformers
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    GenerationConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
)

from tamp.atomic_write import apply_umask, make_temp_dir
from tamp.calibration import pictures
from tamp.calibration.pictures import QUESTIONS, TRAIN_SEED, Conversation, conversations, render, scenes
from tamp.families.registry import trained_families
from tamp.processors import load_processor
from tamp.testing import tiny, tiny_tokenizers
from tamp.testing.tiny import build_tiny

TRAINING_FILE = "training.json"


@dataclass(frozen=True)
class Recipe:
    """Model widths and optimisation settings; the defaults are the registry model's.

    Vision: a 64 x 64 picture is one 64 px tile (plus anyres' overview of the same size), 16 px patches, so
    36 image tokens. Decoder: 8 heads of 16 (more heads learned to route each question kind to the image
    faster than 4 of 32 at the same width). Stage 1 trains the tower alone (``vision_*``), stage 2 the
    projector and decoder on one question per picture, word questions ``word_weight`` times and colour questions
    ``colour_weight`` times as often as the others (without the weights, words were learned last and colours
    not at all: 19/30 colour questions right with colour weight 1, 30/30 with 3).

    ``init_std`` 0.08 (transformers' default is 0.02) is what makes pruning hurt, as it hurts a real LLM. At 0.02
    the trained decoder weights stay near their small random start, magnitude pruning at 70% removes mostly that
    noise, and the model did not notice (0.93 teacher-forced exact answers on 160 held-out questions, dense 0.91).
    At 0.08 the decoder computes through all its weights: dense 0.96, magnitude 50% 0.94, 70% 0.49, 80% 0.04.
    A narrower or deeper decoder at 0.02 did not get there (hidden 64: dense 0.74; 8 layers of 96: 70% at 0.77).
    ``intermediate`` 256 (512 before) keeps those scores and trains in 2 min 38 s on one core instead of 4 min.
    """

    hidden: int = 128
    intermediate: int = 256
    layers: int = 4
    heads: int = 8
    kv_heads: int = 4
    vision_hidden: int = 64
    vision_intermediate: int = 256
    vision_layers: int = 3
    feature_layer: int = -1
    tile: int = 64
    patch: int = 16
    vision_steps: int = 500
    vision_batch: int = 64
    vision_lr: float = 5e-3
    steps: int = 700
    batch: int = 16
    turns: int = 1
    word_weight: float = 2.5
    colour_weight: float = 3.0
    lr: float = 1e-3
    warmup: int = 30
    weight_decay: float = 0.01
    clip: float = 1.0
    threads: int = 1
    init_std: float = 0.08  # text_config.initializer_range: the std of the random start, see above


def _pinpoints(r: Recipe) -> list[list[int]]:
    """anyres grid: 1 x 1 to 2 x 2 tiles (a 64 x 64 picture is one tile beside the downscaled overview)."""
    return [[r.tile * a, r.tile * b] for a in (1, 2) for b in (1, 2)]


def _processor(base: Any, r: Recipe) -> LlavaNextProcessor:
    """The tiny llava-next processor (tokenizer, chat template, normalisation) with the recipe's tile and patch."""
    images = LlavaNextImageProcessorPil(
        size={"shortest_edge": r.tile}, crop_size={"height": r.tile, "width": r.tile},
        image_grid_pinpoints=_pinpoints(r), image_mean=list(base.image_processor.image_mean),
        image_std=list(base.image_processor.image_std))
    tok = base.tokenizer
    return LlavaNextProcessor(image_processor=images, tokenizer=tok, patch_size=r.patch,
                              vision_feature_select_strategy="default", chat_template=tok.chat_template,
                              image_token="<image>", num_additional_image_tokens=1)


def _config(base: Path, r: Recipe) -> Any:
    """The tiny llava-next config (token ids, chat tokens) at the recipe's widths, tile and patch."""
    config = AutoConfig.from_pretrained(base)
    config.image_grid_pinpoints = _pinpoints(r)
    config.image_seq_length = (r.tile // r.patch) ** 2
    config.vision_feature_layer = r.feature_layer
    text, vision = config.text_config, config.vision_config
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = r.hidden, r.intermediate, r.layers
    text.num_attention_heads, text.num_key_value_heads = r.heads, r.kv_heads
    text.head_dim = r.hidden // r.heads
    vision.hidden_size, vision.intermediate_size, vision.num_hidden_layers = (
        r.vision_hidden, r.vision_intermediate, r.vision_layers)
    vision.projection_dim = r.vision_hidden
    vision.image_size, vision.patch_size = r.tile, r.patch
    vision.num_attention_heads = max(1, r.vision_hidden // 32)
    text.initializer_range = r.init_std
    config.dtype = torch.float32
    return config


def encode(processor: Any, conv: Conversation) -> dict[str, torch.Tensor]:
    """One conversation -> input ids, labels (the answers and their eos; -100 elsewhere) and pixel values.

    The text up to the first answer goes through the processor exactly as lmms-eval's LLaVA wrapper sends an
    evaluation prompt (so the first turn is token for token an evaluation prompt); each answer and each later
    turn is tokenized on its own and appended.
    """
    tok = processor.tokenizer
    messages = conv.messages()
    pieces: list[tuple[str, bool]] = []  # (text, is an answer)
    done = ""
    for i in range(0, len(messages), 2):
        prompt = tok.apply_chat_template(messages[: i + 1], tokenize=False, add_generation_prompt=True)
        answer = f" {messages[i + 1]['content']}{tok.eos_token}"
        pieces += [(prompt[len(done):], False), (answer, True)]
        done = prompt + answer
        full = tok.apply_chat_template(messages[: i + 2], tokenize=False)
        if not full.startswith(done):
            raise RuntimeError(f"chat template does not end an answer with eos as expected: {full!r}")
    first = processor(text=[pieces[0][0]], images=[render(conv.scene)], return_tensors="pt")
    ids, labels = [first["input_ids"][0]], [torch.full_like(first["input_ids"][0], -100)]
    for text, is_answer in pieces[1:]:
        piece = torch.tensor(tok(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        ids.append(piece)
        labels.append(piece.clone() if is_answer else torch.full_like(piece, -100))
    return {"input_ids": torch.cat(ids), "labels": torch.cat(labels), "pixel_values": first["pixel_values"][0],
            "image_sizes": first["image_sizes"][0]}


def collate(samples: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch (padding is masked out of attention and loss)."""
    width = max(len(s["input_ids"]) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, s in enumerate(samples):
        n = len(s["input_ids"])
        ids[row, :n], labels[row, :n], mask[row, :n] = s["input_ids"], s["labels"], 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels,
            "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
            "image_sizes": torch.stack([s["image_sizes"] for s in samples])}


ATTRIBUTES = {kind: answers for kind, (_, answers) in QUESTIONS.items()}


def _batches(processor: Any, stream: Iterator[Conversation], batch: int) -> Iterator[dict[str, torch.Tensor]]:
    pad_id = processor.tokenizer.pad_token_id
    while True:
        yield collate([encode(processor, conv) for conv in itertools.islice(stream, batch)], pad_id)


def _answer_batches(processor: Any, r: Recipe, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Stage 2's endless batch stream: one question per picture, the recipe's kind weights."""
    stream = conversations(scenes(TRAIN_SEED + seed), seed=TRAIN_SEED + seed + 1, turns=r.turns,
                           first_kind_weights={"word": r.word_weight, "colour": r.colour_weight})
    return _batches(processor, stream, r.batch)


def _probe_batches(processor: Any, r: Recipe, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Stage 1's endless batch stream: pixel values and, per picture, the index of each attribute's answer."""
    stream = scenes(TRAIN_SEED + seed + 2)
    while True:
        batch = list(itertools.islice(stream, r.vision_batch))
        pixels = processor.image_processor([render(s) for s in batch], return_tensors="pt")["pixel_values"]
        labels = torch.tensor([[answers.index(s.answer(kind)) for kind, answers in ATTRIBUTES.items()] for s in batch])
        yield pixels, labels


class _Stream(torch.utils.data.IterableDataset):
    def __init__(self, make: Callable[[], Iterator[Any]]) -> None:
        self.make = make

    def __iter__(self) -> Iterator[Any]:
        return self.make()


def prefetched(make: Callable[[], Iterator[Any]], steps: int) -> Iterator[Any]:
    """The first ``steps`` items of ``make()``, made in one worker process while the caller trains on the last.

    Drawing pictures and running the image processor is a fifth of the build; on a second core it overlaps the
    training step. One worker consumes the seeded stream in order, so the items are those ``make()`` yields in
    this process (the worker holds no torch state the training uses).
    """
    # its own generator: the loader's worker seed is not drawn from (and does not move) the training's global RNG
    loader = torch.utils.data.DataLoader(_Stream(make), batch_size=None, num_workers=1, prefetch_factor=4,
                                         generator=torch.Generator().manual_seed(0))
    return itertools.islice(iter(loader), steps)


def _schedule(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress))


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float, steps: int,
               warmup: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW (no decay on norms, biases and embeddings) with warm-up and cosine decay."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if p.dim() >= 2 and "embed" not in n]
    rest = [p for n, p in params if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, steps, warmup))


def _bar(steps: Iterator[Any], total: int, desc: str, log: bool) -> Any:
    """The training steps, with one progress bar on stderr when `log` (the loss beside it): a build takes
    minutes, and says how far it is."""
    quiet = {} if log else {"disable": True}  # shown: tqdm's own default (TQDM_DISABLE=1 still silences it)
    return tqdm(steps, total=total, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True, **quiet)


def pretrain_vision(model: Any, processor: Any, r: Recipe, seed: int, log: bool = False) -> list[float]:
    """Stage 1, in place of a pretrained CLIP: teach the vision tower to see each attribute of a picture.

    A linear probe over the features the projector will read (the tiles' patch tokens at
    ``vision_feature_layer``) classifies colour, shape, word and position; it is thrown away afterwards.
    """
    tower, layer = model.model.vision_tower, model.config.vision_feature_layer
    probe: torch.nn.Module | None = None
    opt = sched = None
    losses = []
    bar = _bar(prefetched(partial(_probe_batches, processor, r, seed), r.vision_steps), r.vision_steps,
               "train the vision tower (1/2)", log)
    for pixels, labels in bar:
        tiles = pixels.flatten(0, 1)  # (batch * tiles, 3, side, side): base picture + anyres tiles
        feats = tower(tiles, output_hidden_states=True).hidden_states[layer][:, 1:]  # without CLS ("default")
        feats = feats.reshape(len(pixels), -1)
        if probe is None:
            probe = torch.nn.Linear(feats.shape[1], sum(len(a) for a in ATTRIBUTES.values()))
            opt, sched = _optimizer(torch.nn.ModuleList([tower, probe]), r.vision_lr, r.weight_decay,
                                    r.vision_steps, r.warmup)
        logits = probe(feats).split([len(a) for a in ATTRIBUTES.values()], dim=1)
        parts = [torch.nn.functional.cross_entropy(out, labels[:, i]) for i, out in enumerate(logits)]
        loss = torch.stack(parts).sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*tower.parameters(), *probe.parameters()], r.clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if log:
            per_kind = " ".join(f"{kind} {part.item():.3f}" for kind, part in zip(ATTRIBUTES, parts))
            bar.set_postfix_str(f"loss {losses[-1]:.4f} ({per_kind})", refresh=False)
    return losses


def train(model: torch.nn.Module, processor: Any, r: Recipe, seed: int, log: bool = False) -> list[float]:
    """Stage 2: AdamW on the answer tokens of ``r.steps`` fresh batches; returns the loss of every step.

    The vision tower stays frozen, as LLaVA keeps its CLIP tower frozen: stage 1 already taught it to see.
    """
    model.model.vision_tower.requires_grad_(False)
    opt, sched = _optimizer(model, r.lr, r.weight_decay, r.steps, r.warmup)
    losses = []
    model.train()
    bar = _bar(prefetched(partial(_answer_batches, processor, r, seed), r.steps), r.steps,
               "train the answers (2/2)", log)
    for batch in bar:
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r.clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if log:
            bar.set_postfix_str(f"loss {losses[-1]:.4f}", refresh=False)
    model.eval()
    model.requires_grad_(True)
    return losses


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over the names, shapes and float32 bytes of the state dict (what 'the same weights' means)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to(torch.float32).contiguous().cpu()
        h.update(f"{name}:{tuple(t.shape)}\n".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def recipe_fingerprint() -> str:
    """Hash of what shapes the trained weights: this recipe, the data generator, the tiny tokenizer and
    processor (tamp.testing.tiny) and the torch / transformers versions. Keys the cache, so an edit never reuses a
    model trained by older code."""
    h = hashlib.sha256(f"torch {torch.__version__} transformers {transformers.__version__}\n".encode())
    for module in (__file__, pictures.__file__, tiny.__file__, tiny_tokenizers.__file__):
        h.update(Path(module).read_bytes())
    return h.hexdigest()


def trained_cache_name(family: str, seed: int = 0) -> str:
    """A folder name for a build of this recipe (the tests train it once into the user's cache under this name,
    so an edit of the recipe trains anew); the registry model is the shipped build, not this."""
    return f"trained-{family}-seed{seed}-{recipe_fingerprint()[:12]}"


def provenance() -> dict[str, str]:
    """Where a build was made, for the shipped model's manifest: library versions and the CPU kernels torch used."""
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "machine": platform.machine()}


def _move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / TRAINING_FILE).is_file():
            raise ValueError(f"{out} exists and is not a trained tiny model; choose an empty or new --out")
        if not overwrite:
            return
        shutil.rmtree(out)
    apply_umask(tmp)  # safetensors writes its weights 0600
    os.replace(tmp, out)


def build_trained_tiny(family: str, out: str | Path, seed: int = 0, recipe: Recipe | None = None,
                       log: bool = False, overwrite: bool = True) -> Path:
    """Train the tiny ``family`` model and write it (a plain transformers checkpoint) into ``out``.

    Built under a temporary name beside ``out``, then renamed, so ``out`` is never half-written. An existing
    ``out`` is replaced only if it is an earlier trained build (or empty) and ``overwrite`` is set; without
    ``overwrite`` a finished ``out`` (another process's build of the same cache entry) is kept. The caller's
    torch RNG state, thread count and deterministic-algorithms setting are left as they were.
    """
    if family not in trained_families():
        raise ValueError(f"no training recipe for family {family!r}; trained families: {', '.join(trained_families())}")
    r = recipe or Recipe()
    out = Path(out)
    tmp = make_temp_dir(out)  # tamp.atomic_write: a killed build's temp beside `out` goes with the next build
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        base = build_tiny(family, tmp / "base", seed=seed)
        processor = _processor(load_processor(base), r)
        start, cpu_start = time.perf_counter(), time.process_time()
        torch.set_num_threads(r.threads)
        torch.use_deterministic_algorithms(True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlavaNextForConditionalGeneration(_config(base, r)).to(torch.float32)
            vision_losses = pretrain_vision(model, processor, r, seed, log=log)
            losses = train(model, processor, r, seed, log=log)
        train_s, train_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
        model.generation_config = GenerationConfig.from_pretrained(base)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        shutil.rmtree(base)
        info = {"family": family, "seed": seed, "recipe": asdict(r), "train_seconds": round(train_s, 1),
                "train_cpu_seconds": round(train_cpu_s, 1),
                "parameters": sum(p.numel() for p in model.parameters()), "vision_losses": [round(x, 4) for x in vision_losses],
                "losses": [round(x, 4) for x in losses],
                "weights_sha256": weights_sha256(model), "torch": torch.__version__}
        (tmp / TRAINING_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        _move_into_place(tmp, out, overwrite)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        shutil.rmtree(tmp, ignore_errors=True)
    return out
