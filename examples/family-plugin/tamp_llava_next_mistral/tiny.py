"""The tiny random llava-next-mistral: tamp's tiny LLaVA-NeXT (CLIP tower, anyres tiles, processor, chat template)
with its Llama language model swapped for a Mistral one of the same shape, and a config that claims the family."""

from __future__ import annotations

import copy

from transformers import LlavaNextForConditionalGeneration, MistralConfig, PreTrainedTokenizerFast, ProcessorMixin

from tamp.families.registry import CLAIM_KEY
from tamp.testing.tiny import build_llava_next
from tamp_llava_next_mistral import NAME

# the language model fields copied from the LLaVA-NeXT build (its width, depth, heads and special token ids)
_TEXT_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "max_position_embeddings", "rms_norm_eps", "vocab_size", "bos_token_id", "eos_token_id",
                "pad_token_id", "tie_word_embeddings")


def build(tok: PreTrainedTokenizerFast) -> tuple[LlavaNextForConditionalGeneration, ProcessorMixin]:
    """(model, processor) for tamp's tiny builder, which seeds, saves and writes the tokenizer around it."""
    llava_next, processor = build_llava_next(tok)
    config = copy.deepcopy(llava_next.config)
    text = config.text_config
    config.text_config = MistralConfig(**{name: getattr(text, name) for name in _TEXT_FIELDS}, sliding_window=None)
    setattr(config, CLAIM_KEY, NAME)
    return LlavaNextForConditionalGeneration(config), processor
