"""Every `--json` output against the keys README.md documents under "Scripting with --json"
(issue 19 §4, "Must show"): the table is parsed here, so docs and code cannot drift."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from outbox.config import ChannelConfig
from outbox.sandbox import Sandbox
from tests.paths import ROOT
from tests.support import config_toml, fetch, insert
from tests.support import outbox_command as _outbox

pytestmark = pytest.mark.slow

_SECTION = "### Scripting with --json"
_CHANNEL_SETTINGS = "[[channels]]"  # "every `[[channels]]` setting" in the table
_MESSAGE_COLUMNS = "outbox.messages"  # "every column of `outbox.messages`"


def documented() -> dict[str, tuple[set[str] | None, dict[str, set[str]]]]:
    """Command -> (top-level keys, or None for a list; nested path -> keys)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(_SECTION) :]
    table: dict[str, tuple[set[str] | None, dict[str, set[str]]]] = {}
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        top = None if cells[1] == "a list" else set(re.findall(r"`([^`]+)`", cells[1]))
        nested: dict[str, set[str]] = {}
        for part in cells[2].split("; "):
            path, _, keys = part.partition(": ")
            nested[path.strip("`")] = set(re.findall(r"`([^`]+)`", keys))
        for command in re.findall(r"`([^`]+)`", cells[0]):
            table[command] = (top, nested)
    return table


def _items(value: Any, path: str) -> list[Any]:
    """The objects at `path` (`a[].b`, `[]`) in `value`."""
    found = [value]
    for step in path.split("."):
        name, many = step.removesuffix("[]"), step.endswith("[]")
        found = [f[name] if name else f for f in found]
        if many:
            found = [item for f in found for item in f]
    return found


def _expand(keys: set[str], columns: set[str]) -> set[str]:
    if _CHANNEL_SETTINGS in keys:
        settings = {f.name for f in fields(ChannelConfig) if not f.metadata.get("secret")}
        keys = keys - {_CHANNEL_SETTINGS} | settings
    if _MESSAGE_COLUMNS in keys:
        keys = keys - {_MESSAGE_COLUMNS} | columns
    return keys


def assert_documented(command: str, output: Any, columns: set[str]) -> None:
    top, nested = documented()[command]
    if top is None:
        assert isinstance(output, list), command
    else:
        assert set(output) == _expand(top, columns), command
    for path, keys in nested.items():
        items = _items(output, path)
        assert items, f"{command}: nothing at {path} to check"
        for item in items:
            assert isinstance(item, dict), (command, path)
            if keys:
                assert set(item) == _expand(keys, columns), (command, path)
            else:  # "one count per reason"
                assert all(isinstance(v, int) for v in item.values()), (command, path)


async def test_every_json_output_has_the_documented_keys(
    db_url: str, sandbox: tuple[Sandbox, str], tmp_path: Path
) -> None:
    config = tmp_path / "outbox.toml"
    config.write_text(config_toml(db_url, sandbox[1]))
    at = ("--config", str(config))
    failed = await insert(
        db_url, "cloud", "4915111111111", {"type": "text", "text": {"body": "x"}},
        state="failed", error_code="http_500",
    )  # fmt: skip
    await insert(db_url, "onprem", "4915122222222", {"type": "text", "text": {"body": "y"}})
    for statement in (
        "INSERT INTO outbox.templates (waba_id, name, language, status, category, source)"
        " VALUES ('1023', 'promo', 'en_US', 'PAUSED', 'MARKETING', 'webhook')",
        "INSERT INTO outbox.account_health (channel, waba_id, quality_event, current_limit)"
        " VALUES ('cloud', '1023', 'FLAGGED', 'TIER_10K')",
        "INSERT INTO outbox.account_events (channel, kind, event, effect, detail, at) VALUES"
        " ('cloud', 'account', 'DISABLED_UPDATE', 'pause', 'ban state DISABLE', now())",
    ):
        await fetch(db_url, statement)
    code, _, err = await _outbox(
        "channels", "add", "reg-a", "--dialect", "cloud", "--base-url", sandbox[1],
        "--api-key-env", "TEST_CLOUD_KEY", *at,
    )  # fmt: skip
    assert code == 0, err
    # A real replay first, so that `show` has an operator action to list.
    code, _, err = await _outbox("replay", "--id", str(failed), "--yes", "--json", *at)
    assert code == 0, err
    columns = {
        r[0]
        for r in await fetch(
            db_url,
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = 'outbox' AND table_name = 'messages'",
        )
    }
    await fetch(db_url, f"UPDATE outbox.messages SET state = 'failed' WHERE id = {failed}")
    await fetch(
        db_url,
        "INSERT INTO outbox.status_history (message_id, wamid, status, at, verdict) VALUES"
        f" ({failed}, 'wamid.J1', 'failed', '2026-01-01T00:00:00Z', 'applied')",
    )
    await fetch(
        db_url,
        "INSERT INTO outbox.marketing_preferences (channel, identity, category, opted_out, at,"
        " source) VALUES ('cloud', '4915111111111', 'marketing_messages', true, now(), '131050')",
    )

    runs = {
        "check": ("check",),
        "stats": ("stats",),
        "show": ("show", str(failed)),
        "replay": ("replay", "--channel", "cloud", "--dry-run"),
        "cancel": ("cancel", "--channel", "onprem", "--dry-run"),
        "purge": ("purge", "--older-than", "1h", "--dry-run"),
        "channels list": ("channels", "list"),
        "channels show": ("channels", "show", "reg-a"),
        "templates list": ("templates", "list"),
    }
    assert set(runs) == set(documented())
    for command, argv in runs.items():
        code, out, err = await _outbox(*argv, "--json", *at)
        assert code in ((0, 1) if command == "check" else (0,)), (command, err)
        assert "Traceback" not in err
        assert_documented(command, json.loads(out), columns)
