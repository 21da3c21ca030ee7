"""harness: prune-then-evaluate through lmms-eval, run records, tables."""
