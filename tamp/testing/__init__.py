"""Test scaffolding that ships with tamp: tiny random models (``tamp.testing.tiny``).

A package of its own so that the library's save and evaluation paths (``tamp.artifacts``,
``harness.wrappers``) cannot pull it in by accident; only resolving a ``tiny-<family>``
name and ``tamp build-tiny`` import it, lazily.
"""
