"""Issue 19 §3: a database URL with an unencoded `/`, `#`, `?` or `@` in its password is refused
with the password masked, by every command that takes it, never a traceback that quotes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import config_toml, outbox_command

PASSWORD = "Pa55/w0rd-7d1c"


@pytest.mark.parametrize("verb", [("check",), ("migrate",), ("run", "--role", "sender")])
@pytest.mark.parametrize(
    "password", [PASSWORD, "Pa55#w0rd-7d1c", "Pa55?w0rd-7d1c", "Pa55@w0rd-7d1c"]
)
async def test_no_part_of_the_password_reaches_stderr(
    tmp_path: Path, verb: tuple[str, ...], password: str
) -> None:
    url = f"postgresql://outbox:{password}@127.0.0.1:9/outbox"
    config = tmp_path / "outbox.toml"
    config.write_text(config_toml("postgresql://unused@127.0.0.1:9/x", "http://127.0.0.1:9"))
    code, out, err = await outbox_command(
        *verb, "--config", str(config), env={"OUTBOX_DATABASE_URL": url}
    )
    assert code == 2, (out, err)
    assert "Traceback" not in err
    assert "database_url cannot be parsed" in err
    assert "postgresql://outbox:***@127.0.0.1:9/outbox" in err
    for part in ("Pa55", "w0rd", "7d1c", password):
        assert part not in out + err
