"""The test suite's own resources: nothing a test starts outlives it, whatever the timing.

On a busy machine a command can overrun its timeout. The process must still be killed and
reaped, and its pipes closed, or the garbage collector reports them in some later test (an
unraisable `ResourceWarning`, an error under the suite's `filterwarnings = error`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.support import run_process

_SLEEPER = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"


async def test_a_command_past_its_timeout_is_killed_and_reaped(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    with pytest.raises(TimeoutError):
        await run_process(sys.executable, "-c", _SLEEPER, str(pid_file), within=2)
    # Gone and reaped: a zombie would still accept signal 0.
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)
