"""Log fields that name channels, bounded: a partner's fleet has thousands of numbers, and one
line listing them all (100 kB at 10,000) is split or dropped by most log pipelines (Docker's
json-file splits at 16 kB, journald at 48 kB)."""

from __future__ import annotations

from collections.abc import Collection

# Enough to read which channels a small change touched; a bigger one says how many.
LISTED = 20


def ids(name: str, values: Collection[str]) -> dict[str, object]:
    """`name`: the first LISTED of `values` in sorted order, and `name_total`: how many there
    are, as keyword arguments for one log call."""
    return {name: sorted(values)[:LISTED], f"{name}_total": len(values)}
