"""CSV cells a spreadsheet shows as text and never runs as a formula (CSV injection).

In `core` (no app imports) because every export uses it: checks' reports and batches, billing's usage.
"""

from __future__ import annotations

from typing import Any

# Spreadsheets run cells that start with these as formulas.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_value(value: Any) -> Any:
    """A CSV cell: "" for None, true/false, and text that a spreadsheet would run as a formula quoted."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value
