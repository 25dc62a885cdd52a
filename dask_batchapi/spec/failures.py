"""The submission's failure policy extensions: the error budget and item ids.

``error_budget`` (our extension): ``{"max_failed_ratio": 0.05, "min_items": 1000}`` ends a job
early once more than 5% of the items seen so far have failed, looked at only after 1000 items;
``{"max_failed_items": 10}`` once more than 10 have. Both forms may be combined.

>>> parse_error_budget({"max_failed_ratio": 0.1, "min_items": 100})
ErrorBudget(max_failed_ratio=0.1, min_items=100, max_failed_items=None)
>>> ErrorBudget(max_failed_items=2).exceeded(failed=3, seen=10)
True
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dask_batchapi.spec._validate import Invalid, check_keys, integer, mapping, show

logger = logging.getLogger(__name__)

_BUDGET_KEYS = ["max_failed_ratio", "min_items", "max_failed_items"]


@dataclass(frozen=True)
class ErrorBudget:
    """How many failed items a job tolerates before it stops taking new batches."""

    max_failed_ratio: float | None = None
    min_items: int = 0
    max_failed_items: int | None = None

    def exceeded(self, failed: int, seen: int) -> bool:
        """Whether ``failed`` of ``seen`` items (final ones) is over the budget."""
        if self.max_failed_items is not None and failed > self.max_failed_items:
            return True
        if self.max_failed_ratio is None or seen < max(1, self.min_items):
            return False
        return failed > self.max_failed_ratio * seen

    def describe(self) -> str:
        """``max_failed_ratio 0.05 after 1000 items`` / ``max_failed_items 10``."""
        parts = []
        if self.max_failed_ratio is not None:
            parts.append(f"max_failed_ratio {self.max_failed_ratio} after {self.min_items} items")
        if self.max_failed_items is not None:
            parts.append(f"max_failed_items {self.max_failed_items}")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        data: dict[str, Any] = {}
        if self.max_failed_ratio is not None:
            data.update(max_failed_ratio=self.max_failed_ratio, min_items=self.min_items)
        if self.max_failed_items is not None:
            data["max_failed_items"] = self.max_failed_items
        return data


def parse_error_budget(value: Any) -> ErrorBudget:
    """Validate ``error_budget``; one line naming the key and the value on a mistake."""
    data = mapping(value, "error_budget")
    check_keys(data, _BUDGET_KEYS, "error_budget")
    ratio = data.get("max_failed_ratio")
    if ratio is not None and (
        isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1
    ):
        raise Invalid(
            f"error_budget.max_failed_ratio must be a number in [0, 1), got {show(ratio)}"
        )
    if ratio is None and "min_items" in data:
        raise Invalid("error_budget.min_items needs error_budget.max_failed_ratio")
    most = data.get("max_failed_items")
    if ratio is None and most is None:
        raise Invalid("error_budget needs max_failed_ratio or max_failed_items")
    return ErrorBudget(
        max_failed_ratio=None if ratio is None else float(ratio),
        min_items=integer(data.get("min_items", 0), "error_budget.min_items", 0),
        max_failed_items=None
        if most is None
        else integer(most, "error_budget.max_failed_items", 0),
    )


def parse_isolate_items(queue: dict, key: str) -> bool | None:
    """``dead_letter.isolate_items``: a boolean, or None when absent (the config decides)."""
    value = queue.get("isolate_items")
    if value is not None and not isinstance(value, bool):
        raise Invalid(f"{key}.isolate_items must be true or false, got {show(value)}")
    return value


def check_item_ids(items: Sequence, id_key: str | None, where: str = "item_list") -> None:
    """Every item must be an object holding ``id_key`` (checked at submit, not on reload)."""
    if id_key is None:
        return
    for position, item in enumerate(items):
        if not isinstance(item, dict) or id_key not in item:
            raise Invalid(
                f"{where}.items[{position}] has no field {id_key!r} ({where}.id_key), "
                f"got {show(item)}"
            )


def item_id(item: Any, id_key: str | None) -> Any:
    """The id of one item (None when the item is not an object or lacks the field)."""
    if id_key is None or not isinstance(item, dict):
        return None
    return item.get(id_key)
