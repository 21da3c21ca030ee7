"""Inference-time transforms that tamp applies to a loaded model (token reduction), and what they cost."""

# bumped when what the sequence-editing core computes changes (which tokens run where, the cost it records): keys
# of artifacts that carry a token method cover it
VERSION = 1
