"""`NO_COLOR` (https://no-color.org) and non-terminals get console logs without ANSI escapes
(issue 19 §4)."""

from __future__ import annotations

import io

import pytest
import structlog

from tests.integration.test_logs import logs_into


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _console_line(stream: io.StringIO) -> str:
    with logs_into(stream, "info", "console"):
        structlog.get_logger("outbox.test").warning("outbox.colour.probe", channel="shop")
    return stream.getvalue()


def test_a_terminal_gets_colours_unless_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert "\x1b[" in _console_line(_Terminal())  # the probe can fail
    monkeypatch.setenv("NO_COLOR", "1")
    line = _console_line(_Terminal())
    assert "outbox.colour.probe" in line
    assert "\x1b[" not in line


def test_console_logs_into_a_file_have_no_colours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    line = _console_line(io.StringIO())
    assert "outbox.colour.probe" in line
    assert "\x1b[" not in line
