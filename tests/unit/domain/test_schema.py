from __future__ import annotations

import pytest

from outbox.domain.schema import Declaration, judge_schema

CODE = ("0001", "0005", "0009")  # this release's revisions, oldest first


def d(down: str | None, compatible_with: str) -> Declaration:
    return Declaration(down, compatible_with)


# (database revision, declarations in the database, usable, newer, message starts with)
CASES = [
    ("0009", {}, True, False, "schema current (revision 0009)"),
    ("0009", {"0010": d("0009", "0010")}, True, False, "schema current (revision 0009)"),
    (
        None,
        {},
        False,
        False,
        "schema empty; this release needs revision 0009: run `outbox migrate`",
    ),
    (
        "0005",
        {},
        False,
        False,
        "schema at revision 0005 is older than this release (0009): run `outbox migrate`",
    ),
    ("0001", {}, False, False, "schema at revision 0001 is older"),
    # Additive newer releases: one step, two steps, one declaring an older release still.
    (
        "0010",
        {"0010": d("0009", "0009")},
        True,
        True,
        "schema at revision 0010, newer than this release (0009) and declared compatible",
    ),
    (
        "0011",
        {"0010": d("0009", "0009"), "0011": d("0010", "0005")},
        True,
        True,
        "schema at revision 0011, newer",
    ),
    # Declared incompatible: at the top, or at any step between this release and the top.
    (
        "0010",
        {"0010": d("0009", "0010")},
        False,
        False,
        "schema at revision 0010 needs a release at revision 0010 or newer; this release is at 0009: deploy a newer release",
    ),
    (
        "0011",
        {"0010": d("0009", "0010"), "0011": d("0010", "0009")},
        False,
        False,
        "schema at revision 0011 needs a release at revision 0010 or newer",
    ),
    # A newer release whose migration declared nothing, at the top or in between.
    (
        "0010",
        {},
        False,
        False,
        "schema at revision 0010 is unknown to this release (0009) and declares no compatibility with it",
    ),
    (
        "0011",
        {"0011": d("0010", "0009")},
        False,
        False,
        "schema at revision 0011 is unknown to this release",
    ),
    # Another line of history: branched off before this release, reaches the base, or loops.
    (
        "0006x",
        {"0006x": d("0005", "0005")},
        False,
        False,
        "schema at revision 0006x does not descend from this release's 0009 (its history reaches 0005 instead)",
    ),
    (
        "0010",
        {"0010": d(None, "0001")},
        False,
        False,
        "schema at revision 0010 does not descend from this release's 0009 (its history reaches the base instead)",
    ),
    (
        "a",
        {"a": d("b", "0009"), "b": d("a", "0009")},
        False,
        False,
        "schema at revision a does not descend",
    ),
]


@pytest.mark.parametrize(("current", "declared", "usable", "newer", "message"), CASES)
def test_judge_schema(
    current: str | None, declared: dict[str, Declaration], usable: bool, newer: bool, message: str
) -> None:
    verdict = judge_schema(current, CODE, declared)
    assert (verdict.usable, verdict.newer) == (usable, newer)
    assert verdict.message.startswith(message)
    assert "\n" not in verdict.message
