"""Which database schemas this release may run on: its own newest revision, or a newer one whose
every later migration declares this release compatible (rolling updates and rollbacks).

A release knows its own migrations; a newer release's migrations are not in its files, so each
migration records in the database, with its down_revision, the oldest release (by that release's
newest revision) that still runs on the schema it leaves. The walk from the database's revision
back to this release's head must find a declaration at every step, and each must name a revision
this release has.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Declaration:
    """What one migration recorded: its parent, and the oldest release that runs on it."""

    down_revision: str | None
    compatible_with: str


@dataclass(frozen=True)
class SchemaVerdict:
    usable: bool
    message: str  # one line, for logs, `/readyz`, `outbox check` and a refused start
    newer: bool = False


def judge_schema(
    current: str | None, code: Sequence[str], declared: Mapping[str, Declaration]
) -> SchemaVerdict:
    """`code`: this release's revisions, oldest first, one line of history."""
    head = code[-1]
    if current is None:
        return SchemaVerdict(
            False, f"schema empty; this release needs revision {head}: run `outbox migrate`"
        )
    if current == head:
        return SchemaVerdict(True, f"schema current (revision {head})")
    if current in code:
        return SchemaVerdict(
            False,
            f"schema at revision {current} is older than this release ({head}): "
            "run `outbox migrate`",
        )
    step: str | None = current
    walked: set[str] = set()
    while step is not None and step not in code and step not in walked:
        walked.add(step)
        declaration = declared.get(step)
        if declaration is None:
            return SchemaVerdict(
                False,
                f"schema at revision {current} is unknown to this release ({head}) and declares "
                "no compatibility with it: deploy the release that migrated it",
            )
        if declaration.compatible_with not in code:
            return SchemaVerdict(
                False,
                f"schema at revision {current} needs a release at revision "
                f"{declaration.compatible_with} or newer; this release is at {head}: "
                "deploy a newer release",
            )
        step = declaration.down_revision
    if step != head:
        # A history that branched off before this release, or a broken chain of declarations.
        return SchemaVerdict(
            False,
            f"schema at revision {current} does not descend from this release's {head} "
            f"(its history reaches {step or 'the base'} instead): deploy the release that "
            "migrated it",
        )
    return SchemaVerdict(
        True,
        f"schema at revision {current}, newer than this release ({head}) and declared "
        "compatible with it",
        newer=True,
    )
