"""The --where language: parsed into a tree, applied as values, never evaluated."""

from __future__ import annotations

import pandas as pd
import pytest

from synthmix.results.filters import And, Compare, FilterError, Not, Or, apply_filters, parse_where


@pytest.fixture
def table() -> pd.DataFrame:
    return pd.DataFrame({
        "architecture": ["unet", "unet", "uresnet", "uresnet", "deepmedic"],
        "real_fraction": [0.1, 0.5, 0.1, 1.0, 0.5],
        "synthetic": [0.0, 0.5, 1.0, 0.0, 0.5],
        "augmented": [True, False, True, False, True],
        "dice_mean": [0.7, 0.8, 0.75, 0.85, 0.8],
    })


def test_parses_into_a_tree() -> None:
    assert parse_where("architecture=unet") == Compare("architecture", "=", ("unet",))
    assert parse_where("real_fraction <= 0.5") == Compare("real_fraction", "<=", ("0.5",))
    assert parse_where("synthetic in 0,0.5") == Compare("synthetic", "in", ("0", "0.5"))
    assert parse_where("synthetic not in 0") == Compare("synthetic", "not in", ("0",))
    assert parse_where("a=1 or b=2 and not c='x y'") == Or((
        Compare("a", "=", ("1",)),
        And((Compare("b", "=", ("2",)), Not(Compare("c", "=", ("x y",)))))))


@pytest.mark.parametrize("expression, expected", [
    ("architecture=unet", [0, 1]),
    ("architecture == unet", [0, 1]),
    ("architecture!=unet", [2, 3, 4]),
    ("real_fraction<=0.5", [0, 1, 2, 4]),
    ("real_fraction>0.1", [1, 3, 4]),
    ("synthetic in 0,0.5", [0, 1, 3, 4]),
    ("synthetic not in 0, 0.5", [2]),
    ("architecture in unet,deepmedic and real_fraction=0.5", [1, 4]),
    ("(architecture=unet or architecture=uresnet) and not synthetic=0", [1, 2]),
    ("augmented=true", [0, 2, 4]),
    ("dice_mean >= 0.8", [1, 3, 4]),
])
def test_selects_the_right_rows(table: pd.DataFrame, expression: str, expected: list[int]) -> None:
    assert apply_filters(table, [expression]).index.tolist() == expected


def test_several_expressions_are_anded(table: pd.DataFrame) -> None:
    assert apply_filters(table, ["architecture=unet", "real_fraction<=0.1"]).index.tolist() == [0]


@pytest.mark.parametrize("attack", [
    "__import__('os').system('touch /tmp/pwned')",
    "architecture.str.len() > 0",
    "@table.drop",
    "architecture=unet; import os",
    "dice_mean > dice_mean.max()",
    "real_fraction<=0.5 and",
    "synthetic in",
    "=unet",
])
def test_code_and_malformed_text_are_rejected_not_run(table: pd.DataFrame, attack: str) -> None:
    with pytest.raises(FilterError):
        apply_filters(table, [attack])


def test_clear_errors_for_unknown_column_and_wrong_type(table: pd.DataFrame) -> None:
    with pytest.raises(FilterError, match="no column 'archi'.*architecture"):
        apply_filters(table, ["archi=unet"])
    with pytest.raises(FilterError, match="real_fraction is numeric; 'half' is not a number"):
        apply_filters(table, ["real_fraction=half"])
    with pytest.raises(FilterError, match="not numeric"):
        apply_filters(table, ["architecture<unet"])
