"""lmms-eval keys its response cache (`--use_cache`) by the model name and `model_args`: the model_args `harness run`
passes carry the artifact key, so two configurations of one checkpoint path never share cached responses."""

from __future__ import annotations

from pathlib import Path

from harness.cache import artifact_key
from harness.evaluate import KEY_ARG, model_args
from harness.model_specs import resolve_model
from harness.run import RunOptions, run_recipe


def _key(method: str, sparsity: float) -> str:
    spec = resolve_model("tiny-llava-next")
    recipe = run_recipe(RunOptions(model="tiny-llava-next", sparsity=sparsity, method=method), spec)
    assert not recipe.needs_calibration  # the key alone, no calibration fingerprint, is this recipe's
    return artifact_key(spec, recipe, None)[0]


def _fingerprint(root: Path, args: str) -> str:
    """What lmms-eval 0.7.3's response cache keys a model by (ResponseCache.create: model + parsed model_args)."""
    from lmms_eval.caching.response_cache import ResponseCache

    cache = ResponseCache.create(str(root), model="tamp_llava_hf", model_args=args)
    try:
        return cache.model_fingerprint
    finally:
        cache.close()


def test_two_recipes_on_one_artifact_path_are_two_models_to_lmms_eval(tmp_path: Path) -> None:
    path = tmp_path / "artifacts" / "the-same-dir"
    a, b = _key("magnitude", 0.5), _key("magnitude+fastv", 0.5)
    assert a != b
    args_a, args_b = model_args(path, a, 0.5), model_args(path, b, 0.5)
    assert args_a != args_b and f"{KEY_ARG}={a}" in args_a.split(",")
    assert _fingerprint(tmp_path / "cache", args_a) != _fingerprint(tmp_path / "cache", args_b)
    assert _fingerprint(tmp_path / "cache", args_a) == _fingerprint(tmp_path / "cache", model_args(path, a, 0.5))

