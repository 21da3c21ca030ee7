"""Batched evaluation throughput: a random LLaVA-NeXT built from its config answers the same question about the same
picture at several batch sizes through plain batched `generate`; questions per second, prefill and decode time.

The full shape is LLaVA-NeXT-7B's (llava-v1.6-mistral-7b: decoder hidden 4096, 32 layers, 32 / 8 heads,
intermediate 14336, vocab 32064, as a Llama config; CLIP ViT-L/14 at 336 px; the anyres grid), bf16, sdpa; one
672 x 672 picture -> a 2 x 2 grid + the base view = 2,928 image tokens per question. The tokenizer is the tiny
LLaVA one (its ids fit the vocabulary), the processor LLaVA-NeXT's own with the real tile, patch and grid. Every
question of a batch is the same (left padding is set, none is needed), so a batch is the best case of batching;
the new tokens are fixed (`min_new_tokens`), so each batch decodes the same number of steps.

Prefill and decode times are the harness's own measurements (`tamp.inference.cost.CostMeter`, hooked on the
language model, CUDA synchronised); the vision tower and the projector run outside them, in `other_s`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

SECTION = "batch"


@dataclass(frozen=True)
class BatchShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    tile: int  # the vision tower's input side
    patch: int
    pinpoints: tuple[tuple[int, int], ...]
    picture: int  # the question's picture side, pixels
    new_tokens: int
    batches: tuple[int, ...]
    dtype: str


ANYRES_336 = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
FULL = BatchShape(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=32064, vision_hidden=1024,
                  vision_intermediate=4096, vision_layers=24, vision_heads=16, tile=336, patch=14, pinpoints=ANYRES_336,
                  picture=672, new_tokens=16, batches=(1, 8, 32), dtype="bfloat16")
# the CPU stand-in: the same code, a tiny width, the tiny model's tiles
DRY = BatchShape(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, vocab=32064, vision_hidden=32,
                 vision_intermediate=64, vision_layers=2, vision_heads=2, tile=32, patch=8,
                 pinpoints=((32, 64), (64, 32), (64, 64)), picture=64, new_tokens=4, batches=(1, 2, 4),
                 dtype="float32")


def build(shape: BatchShape, device: torch.device) -> tuple[torch.nn.Module, Any]:
    """The random model on `device` (built there, in its dtype) and its processor."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    from tamp.processors import CLIP_MEAN, CLIP_STD
    from tamp.testing.tiny_tokenizers import make_tokenizer, token_id

    tok = make_tokenizer("llava")
    tok.padding_side = "left"
    image_id = token_id(tok, "<image>")
    if len(tok) > shape.vocab:
        raise ValueError(f"the tiny tokenizer has {len(tok)} ids, more than the vocabulary of {shape.vocab}")
    text = LlamaConfig(hidden_size=shape.hidden, intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
                       num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads, vocab_size=shape.vocab,
                       max_position_embeddings=32768, rms_norm_eps=1e-5, tie_word_embeddings=False,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = CLIPVisionConfig(hidden_size=shape.vision_hidden, intermediate_size=shape.vision_intermediate,
                              num_hidden_layers=shape.vision_layers, num_attention_heads=shape.vision_heads,
                              image_size=shape.tile, patch_size=shape.patch, hidden_act="quick_gelu")
    pinpoints = [list(p) for p in shape.pinpoints]
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                             image_seq_length=(shape.tile // shape.patch) ** 2, vision_feature_layer=-2,
                             vision_feature_select_strategy="default", projector_hidden_act="gelu",
                             image_grid_pinpoints=pinpoints, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaNextForConditionalGeneration._from_config(config, dtype=getattr(torch, shape.dtype)).eval()
    model.set_attn_implementation("sdpa")
    images = LlavaNextImageProcessorPil(size={"shortest_edge": shape.tile},
                                        crop_size={"height": shape.tile, "width": shape.tile},
                                        image_grid_pinpoints=pinpoints, image_mean=list(CLIP_MEAN),
                                        image_std=list(CLIP_STD))
    processor = LlavaNextProcessor(image_processor=images, tokenizer=tok, patch_size=shape.patch,
                                   vision_feature_select_strategy="default", chat_template=tok.chat_template,
                                   image_token="<image>", num_additional_image_tokens=1)
    return model, processor


def picture(side: int) -> Any:
    """A fixed picture: a red square on grey, a green bar."""
    from PIL import Image

    image = Image.new("RGB", (side, side), (128, 128, 128))
    image.paste((200, 30, 30), (side // 8, side // 8, side // 2, side // 2))
    image.paste((20, 180, 40), (side // 2, side * 3 // 4, side - side // 8, side - side // 16))
    return image


def inputs_for(processor: Any, batch: int, side: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the square?"}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    image = picture(side)
    out = processor(text=[prompt] * batch, images=[image] * batch, return_tensors="pt", padding=True)
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in out.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def generate_once(model: torch.nn.Module, processor: Any, meter: Any, shape: BatchShape, batch: int,
                  device: torch.device, new_tokens: int) -> dict[str, Any]:
    """One batched greedy generate of `new_tokens` tokens; times and what the meter saw."""
    dtype = getattr(torch, shape.dtype)
    start = time.perf_counter()
    inputs = inputs_for(processor, batch, shape.picture, device, dtype)
    preprocess_s = time.perf_counter() - start
    tok = processor.tokenizer
    meter.take()  # forget whatever ran before
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    _sync(device)
    wall = time.perf_counter() - start
    raw = meter.export()
    meter.take()
    prompt = int(inputs["input_ids"].shape[1])
    produced = int(out.shape[1]) - prompt
    prefill_s = sum(p["seconds"] for p in raw["prefills"]) * batch  # the meter records per-sample seconds
    image_tokens = int((inputs["input_ids"][0] == model.config.image_token_index).sum())
    return {"batch": batch, "wall_s": wall, "questions_per_s": batch / wall, "preprocess_s": preprocess_s,
            "prefill_s": prefill_s, "decode_s": raw["decode_s"],
            "decode_tokens_per_s": raw["decode_steps"] / raw["decode_s"] if raw["decode_s"] > 0 else None,
            "other_s": wall - prefill_s - raw["decode_s"], "prompt_tokens": prompt, "image_tokens": image_tokens,
            "new_tokens": produced,
            "peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None}


def run(device: torch.device, shape: BatchShape = FULL, log: Any = print) -> dict[str, Any]:
    """Build, warm up at batch 1, then one timed generate per batch size; an out-of-memory batch is recorded as such
    and the larger ones are not tried."""
    from tamp.inference.cost import CostMeter

    start = time.perf_counter()
    model, processor = build(shape, device)
    _sync(device)
    build_s = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    log(f"  batch: built {params / 1e9:.2f}B parameters in {build_s:.1f} s")
    meter = CostMeter(model)
    generate_once(model, processor, meter, shape, 1, device, 2)  # warm-up: kernels, allocator
    rows: list[dict[str, Any]] = []
    for batch in shape.batches:
        try:
            row = generate_once(model, processor, meter, shape, batch, device, shape.new_tokens)
        except torch.cuda.OutOfMemoryError as exc:
            rows.append({"batch": batch, "status": "out of memory", "reason": str(exc).splitlines()[0][:300]})
            log(f"  batch {batch}: out of memory")
            break
        row["status"] = "ok"
        rows.append(row)
        log(f"  batch {batch}: {row['questions_per_s']:.2f} questions/s (prefill {row['prefill_s']:.3f} s, "
            f"decode {row['decode_s']:.3f} s, other {row['other_s']:.3f} s)")
    base = next((r for r in rows if r["batch"] == 1 and r["status"] == "ok"), None)
    for r in rows:
        if base is not None and r["status"] == "ok":
            r["speedup_vs_batch_1"] = r["questions_per_s"] / base["questions_per_s"]
    meter.remove()
    return {"shape": asdict(shape), "params": params, "build_s": build_s, "batches": rows}
