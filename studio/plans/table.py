"""The editable per-layer pruning table, without any UI toolkit.

A table is a list of rows, one per decoder layer, with the columns of `COLUMNS`. Only `ratio`,
`width` and `lock` are editable. An edit is applied against the last valid plan:

- a changed width must satisfy the plan's rule (a positive multiple of `multiple`, at most the
  original width); the ratio follows from it;
- a changed ratio must be a number in [0, 1); the width becomes the nearest allowed multiple
  (`studio.plans.plan.width_for_ratio`), and the ratio is then shown as that width gives it;
- a changed lock must be true or false.

An edit that breaks a rule is rejected as a whole: the table returns to the last valid plan and the
message names the layer, the column and the rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from studio.model_summary import attention_kinds, kv_roles
from studio.plans.plan import PruningPlan, _check_width, width_for_ratio

COLUMNS = ["layer", "attention", "kv", "original", "ratio", "width", "lock"]
EDITABLE = ("ratio", "width", "lock")
RATIO_DECIMALS = 4


def width_rule(multiple: int) -> str:
    return f"width: a positive multiple of {multiple}, at most the layer's original width"


def ratio_rule() -> str:
    return "ratio: a number in [0, 1) (the fraction of the layer's FFN channels removed)"


def plan_rows(plan: PruningPlan, text_config) -> list[list]:
    """The table rows of `plan` for the model of `text_config`."""
    return plan_rows_from(plan, attention_kinds(text_config), kv_roles(text_config))


def plan_rows_from(plan: PruningPlan, kinds: list[str], roles: list[str]) -> list[list]:
    """The table rows of `plan`, given each layer's attention kind and KV role."""
    return [
        [i, kinds[i], roles[i], original, round(1 - width / original, RATIO_DECIMALS), width, lock]
        for i, (original, width, lock) in enumerate(zip(plan.original, plan.widths, plan.locks))
    ]


def plan_to_state(plan: PruningPlan) -> dict:
    """A JSON-safe form of the plan (what the UI keeps between events)."""
    return {
        "widths": list(plan.widths),
        "original": list(plan.original),
        "locks": list(plan.locks),
        "multiple": plan.multiple,
        "name": plan.name,
        "description": plan.description,
    }


def plan_from_state(state: dict) -> PruningPlan:
    plan = PruningPlan(
        widths=[int(w) for w in state["widths"]],
        original=[int(o) for o in state["original"]],
        locks=[bool(x) for x in state["locks"]],
        multiple=int(state["multiple"]),
        name=state.get("name", "custom"),
        description=state.get("description", ""),
    )
    plan.validate()
    return plan


@dataclass(frozen=True)
class EditResult:
    plan: PruningPlan
    accepted: bool
    message: str


def _as_number(value):
    """Cells arrive as numbers or strings (typed by a user); None for something else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _as_bool(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    return None


def _reject(plan: PruningPlan, where: str, got, rule: str) -> EditResult:
    return EditResult(plan, False, f"Rejected {where} = {got!r}. Rule: {rule}. The table was reverted.")


def apply_edit(plan: PruningPlan, rows: list[list]) -> EditResult:
    """Apply the edited `rows` to `plan`; a new plan, or the old one and the broken rule."""
    if len(rows) != len(plan.widths):
        return EditResult(plan, False, f"Rejected: the table must keep one row per layer ({len(plan.widths)}).")
    widths, locks = list(plan.widths), list(plan.locks)
    changed = []
    for i, row in enumerate(rows):
        if len(row) != len(COLUMNS):
            return EditResult(plan, False, f"Rejected: row {i} must have the columns {', '.join(COLUMNS)}.")
        cells = dict(zip(COLUMNS, row))
        original = plan.original[i]
        old_ratio = round(1 - plan.widths[i] / original, RATIO_DECIMALS)
        width = _as_number(cells["width"])
        ratio = _as_number(cells["ratio"])
        lock = _as_bool(cells["lock"])
        if width is None:
            return _reject(plan, f"layer {i} width", cells["width"], width_rule(plan.multiple))
        if ratio is None:
            return _reject(plan, f"layer {i} ratio", cells["ratio"], ratio_rule())
        if lock is None:
            return _reject(plan, f"layer {i} lock", cells["lock"], "lock: true or false")
        if width != plan.widths[i]:
            if width != int(width):
                return _reject(plan, f"layer {i} width", cells["width"], width_rule(plan.multiple))
            try:
                _check_width(i, int(width), original, plan.multiple)
            except ValueError:
                return _reject(plan, f"layer {i} width", cells["width"], width_rule(plan.multiple))
            widths[i] = int(width)
            changed.append(f"layer {i} width {int(width)}")
        elif abs(ratio - old_ratio) > 10 ** -(RATIO_DECIMALS + 1):
            if not 0 <= ratio < 1:
                return _reject(plan, f"layer {i} ratio", cells["ratio"], ratio_rule())
            widths[i] = width_for_ratio(original, float(ratio), plan.multiple)
            changed.append(f"layer {i} ratio {ratio:g} -> width {widths[i]}")
        if lock != plan.locks[i]:
            locks[i] = lock
            changed.append(f"layer {i} {'locked' if lock else 'unlocked'}")
    new_plan = PruningPlan(
        widths=widths,
        original=list(plan.original),
        locks=locks,
        multiple=plan.multiple,
        name=plan.name if not changed else _edited_name(plan.name),
        description=plan.description,
    )
    if changed:
        new_plan.description = edited_description(new_plan)
    new_plan.validate()
    return EditResult(new_plan, True, "; ".join(changed) if changed else "no change")


EDITED_SUFFIX = "-edited"


def _edited_name(name: str) -> str:
    return name if name.endswith(EDITED_SUFFIX) else f"{name}{EDITED_SUFFIX}"


def edited_base_name(name: str) -> str:
    """The plan an edited plan started from ('uniform-20' for 'uniform-20-edited')."""
    return name.removesuffix(EDITED_SUFFIX)


def edited_description(plan: PruningPlan) -> str:
    """What an edited plan now is (the preset's own description would keep its old percentage)."""
    t = plan_totals(plan)
    return (
        f"{edited_base_name(plan.name)} edited in the studio: {t['ffn_removed']:.1%} of FFN channels pruned "
        f"({t['channels_after']:,} of {t['channels_before']:,} kept), {t['layers_pruned']} of {len(plan.widths)} layers pruned"
    )


def plan_totals(plan: PruningPlan) -> dict:
    """Channels kept and removed, as the plan's header shows them."""
    return {
        "channels_before": sum(plan.original),
        "channels_after": sum(plan.widths),
        "ffn_removed": plan.global_ratio,
        "layers_pruned": sum(1 for w, o in zip(plan.widths, plan.original) if w < o),
        "layers_locked": sum(plan.locks),
    }
