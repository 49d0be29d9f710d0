"""The table logic behind the plan editor: rows, ratio/width sync, rejected edits."""

from __future__ import annotations

import pytest

from studio.modeling import load_text_config
from studio.plans.plan import find_preset, load_plan
from studio.plans.table import COLUMNS, apply_edit, plan_from_state, plan_rows, plan_to_state
from tests.conftest import E4B_CONFIG


@pytest.fixture(scope="module")
def e4b():
    return load_text_config(E4B_CONFIG)


@pytest.fixture
def card_plan(e4b):
    return load_plan(find_preset("gemma4-lite-round2"), e4b)


def test_rows_show_type_kv_role_width_and_ratio(card_plan, e4b):
    rows = plan_rows(card_plan, e4b)
    assert len(rows) == 42 and len(rows[0]) == len(COLUMNS)
    assert rows[0] == [0, "sliding", "own", 10240, 0.2, 8192, False]
    assert [r[2] for r in rows[20:25]] == ["own", "own", "stores", "stores", "shared"]
    assert rows[5][1] == "full" and rows[9][4:6] == [0.1, 9216]
    assert [r[2] for r in rows].count("shared") == 18 and rows[24][2] == "shared"


def test_ratio_edit_sets_the_nearest_allowed_width(card_plan, e4b):
    rows = plan_rows(card_plan, e4b)
    rows[4][4] = 0.33  # 10240 * 0.67 = 6860.8 -> nearest multiple of 128 is 6912
    result = apply_edit(card_plan, rows)
    assert result.accepted and result.plan.widths[4] == 6912
    assert plan_rows(result.plan, e4b)[4][4] == pytest.approx(1 - 6912 / 10240, abs=1e-4)


def test_width_edit_typed_as_text_is_accepted(card_plan, e4b):
    rows = plan_rows(card_plan, e4b)
    rows[7][5] = "5120"
    result = apply_edit(card_plan, rows)
    assert result.accepted and result.plan.widths[7] == 5120 and result.plan.global_ratio == pytest.approx(
        (46080 + 5120) / 430080
    )


@pytest.mark.parametrize(
    "row, column, value, rule",
    [
        (3, 5, 8000, "a positive multiple of 128"),
        (3, 5, 0, "a positive multiple of 128"),
        (3, 5, 10368, "at most the layer's original width"),
        (3, 4, 1.0, "a number in [0, 1)"),
        (3, 4, -0.1, "a number in [0, 1)"),
        (3, 6, "maybe", "true or false"),
    ],
)
def test_invalid_edit_returns_the_old_plan_and_the_rule(card_plan, e4b, row, column, value, rule):
    rows = plan_rows(card_plan, e4b)
    rows[row][column] = value
    result = apply_edit(card_plan, rows)
    assert not result.accepted
    assert result.plan is card_plan
    assert f"layer {row}" in result.message and rule in result.message


def test_lock_and_state_round_trip(card_plan, e4b):
    rows = plan_rows(card_plan, e4b)
    rows[0][6] = True
    result = apply_edit(card_plan, rows)
    assert result.plan.locks[0] and "layer 0 locked" in result.message
    again = plan_from_state(plan_to_state(result.plan))
    assert again.widths == result.plan.widths and again.locks == result.plan.locks


def test_wrong_row_count_is_rejected(card_plan, e4b):
    result = apply_edit(card_plan, plan_rows(card_plan, e4b)[:-1])
    assert not result.accepted and "one row per layer (42)" in result.message


def test_an_edited_plan_describes_what_it_now_is(card_plan, e4b):
    rows = plan_rows(card_plan, e4b)
    rows[4][5] = 5120  # layer 4: 10240 -> 5120, on top of the card's 46,080 removed channels
    result = apply_edit(card_plan, rows)
    removed = 46080 + 5120
    assert result.plan.name == "gemma4-lite-round2-edited"
    assert result.plan.description == (
        f"gemma4-lite-round2 edited in the studio: {removed / 430080:.1%} of FFN channels pruned "
        f"({430080 - removed:,} of 430,080 kept), 24 of 42 layers pruned"
    )
    assert "10.7%" not in result.plan.description  # the card's own figure no longer holds
    assert plan_from_state(plan_to_state(result.plan)).to_preset()["description"] == result.plan.description
