"""`outbox demo` as a newcomer runs it: the story on the terminal, the daemon's logs in a file."""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from outbox.cli.runtime import YOUNG_GENERATION
from tests.support import run_process

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


@pytest.fixture(scope="module")
async def demo() -> Run:
    """One run of `outbox demo --messages 200` for every test here (it takes seconds)."""
    # Without XDG_RUNTIME_DIR a dependency warns (RuntimeDirWarning); that must not leak either.
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    # Under pytest-timeout's 120 s for the whole setup, so that a slow run is killed, not left.
    code, out, err = await run_process(
        sys.executable, "-m", "outbox", "demo", "--messages", "200", env=env, within=110
    )
    return Run(code, out, err)


async def test_demo_runs_end_to_end_and_every_sent_message_ends_read(demo: Run) -> None:
    assert demo.code == 0, demo.out[-2000:] + demo.err[-2000:]
    assert "sent as: fallback_template 50, freeform 50, template 50, window_closed 50" in demo.out
    assert "registry: demo-cloud and demo-onprem added, their keys sealed" in demo.out
    table = demo.out.split("\nchannel", 1)[1].splitlines()[:3]
    header, cloud, onprem = (line.split() for line in table)
    assert header == ["read", "failed"]
    assert cloud == ["demo-cloud", "75", "25"]
    assert onprem == ["demo-onprem", "75", "25"]


async def test_the_terminal_tells_the_story_and_nothing_else(demo: Run) -> None:
    lines = demo.out.splitlines() + demo.err.splitlines()
    assert [line for line in lines if line.lstrip().startswith("{")] == []
    assert [line for line in lines if re.search(r"\w+Warning\b", line)] == []
    assert demo.err == ""


async def test_the_daemons_logs_are_in_the_named_file_with_their_counts(demo: Run) -> None:
    named = re.search(r"^the daemon's logs are in (\S+): (.+)$", demo.out, re.MULTILINE)
    assert named is not None, demo.out[-2000:]
    path, summary = Path(named[1]), named[2]
    try:
        events = [json.loads(line) for line in path.read_text().splitlines()]
    finally:
        path.unlink(missing_ok=True)
    levels = Counter(event["level"] for event in events)
    # The daemon inside runs with `outbox run`'s collector settings.
    [started] = [event for event in events if event["event"] == "outbox.started"]
    assert started["gc_threshold"][0] == YOUNG_GENERATION
    printed = {level: int(n) for n, level in (pair.split() for pair in summary.split(", "))}
    assert printed == levels
    # The rows failed `window_closed` on purpose are logged there, not on the terminal.
    assert levels["error"] >= 50
