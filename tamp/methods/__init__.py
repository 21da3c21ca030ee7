"""Pruning methods, one file each (registered by tamp.methods.registry; plugins add more via entry points)."""
