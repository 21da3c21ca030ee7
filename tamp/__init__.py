"""tamp: sequential post-training pruning of (multimodal) LLMs: magnitude, Wanda, SparseGPT and TAMP."""

__version__ = "0.1.0"
