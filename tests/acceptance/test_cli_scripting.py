"""The `outbox` command as scripts use it (issue 19 §4): environment log settings, --json
outputs against the README's documented keys, help texts, a busy sandbox port."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.support import config_toml
from tests.support import outbox_command as _outbox

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("level", ["DEBUG", "Info", "warning"])
async def test_env_log_level_in_any_case_works(tmp_path: Path, level: str) -> None:
    config = tmp_path / "outbox.toml"
    config.write_text(config_toml(f"postgresql://u@/db?host={tmp_path}", "http://127.0.0.1:9"))
    code, _, err = await _outbox("check", "--config", str(config), env={"OUTBOX_LOG_LEVEL": level})
    assert code == 1, err  # the database is absent: the level itself is fine
    assert "Traceback" not in err
    assert "database unreachable" in err


async def test_a_bad_env_log_level_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    code, _, err = await _outbox("check", env={"OUTBOX_LOG_LEVEL": "loud"})
    assert code == 2
    assert err.strip().splitlines() == [
        "outbox: configuration error: OUTBOX_LOG_LEVEL must be one of debug, info, warning, "
        "error, got 'loud'"
    ]


async def test_sandbox_on_a_busy_port_says_so_in_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = await _outbox("sandbox", "--port", str(port))
    assert code == 1
    assert err.strip().splitlines() == [
        f"outbox: error: sandbox: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
