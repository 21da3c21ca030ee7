"""The common token budget: one share, mapped by each token method to its own parameters and recorded."""

from __future__ import annotations

import pytest

from tamp.errors import TampError
from tamp.methods import registry
from tamp.methods.base import TokenMethod
from tamp.recipe import build_recipe
from tamp.token_transform import TokenTransform


def test_budget_sets_fastv_keep_and_is_recorded() -> None:
    recipe = build_recipe("tamp+fastv", 0.5, overrides=["token_budget=0.222"])
    assert recipe.token is not None
    assert recipe.token.params["fastv_keep"] == pytest.approx(0.222)
    assert recipe.token.to_dict()["budget"] == pytest.approx(0.222)
    again = TokenTransform.from_dict(recipe.token.to_dict())
    assert again == recipe.token


def test_no_budget_leaves_the_record_as_it_was() -> None:
    recipe = build_recipe("fastv", 0)
    assert recipe.token is not None and "budget" not in recipe.token.to_dict()


@pytest.mark.parametrize(("overrides", "says"), [
    (["token_budget=0"], "token_budget must be in (0, 1]"),
    (["token_budget=1.5"], "token_budget must be in (0, 1]"),
    (["token_budget=nan"], "finite"),
    (["token_budget=0.2", "fastv_keep=0.3"], "give one or the other"),
])
def test_bad_budgets_are_refused(overrides: list[str], says: str) -> None:
    with pytest.raises(TampError, match=says.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        build_recipe("fastv", 0, overrides=overrides)


def test_methods_without_a_token_count_refuse_it_and_name_those_with_one() -> None:
    with pytest.raises(TampError, match="aim sets no retained-token count.*fastv"):
        build_recipe("aim", 0, overrides=["token_budget=0.3"])
    with pytest.raises(TampError, match="add it to --method"):
        build_recipe("tamp", 0.5, overrides=["token_budget=0.3"])


def test_every_budget_mapping_gives_valid_params() -> None:
    """Each method that takes the budget maps every share in (0, 1] to parameters its own checks accept."""
    budgeted = [m for m in registry.all_methods().values() if isinstance(m, TokenMethod) and m.budget is not None]
    assert budgeted
    for method in budgeted:
        for share in (1.0, 0.333, 0.222, 0.111, 0.01):
            TokenTransform.build(method.name, {"token_budget": share})
