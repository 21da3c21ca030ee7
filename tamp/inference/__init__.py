"""Inference-time transforms that tamp applies to a loaded model (token reduction), and what they cost."""
