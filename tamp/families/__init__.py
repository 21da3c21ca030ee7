"""The model families tamp knows, one module each: every module here that defines ``FAMILY`` is a built-in family.

A family's module holds all that is particular to it (transformers classes, where its stacks and media token ids
are, its processor's video fallback, how its tiny checkpoint is built, how lmms-eval evaluates it); the shared
machinery (``tamp.models``, ``tamp.processors``, ``harness.model_specs``) reads these rows through
``tamp.families.registry``. Third-party packages add families through the ``tamp.families`` entry point.
Nothing here imports torch or transformers, so listing names stays instant.
"""
