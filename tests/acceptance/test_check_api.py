"""`outbox check` asks the API, per channel, whether the key is accepted and the registered
webhook URL is ours (issue 19 §4); `set-webhook` refuses another channel's path. Real
processes against the sandbox."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from outbox.sandbox import Sandbox
from tests.support import config_toml
from tests.support import outbox_command as _outbox

pytestmark = pytest.mark.slow

HOOKS = "http://127.0.0.1:18080/webhooks"


async def _check(config: Path, **env: str) -> tuple[int, dict[str, Any], str]:
    code, out, err = await _outbox("check", "--config", str(config), "--json", env=env)
    assert "Traceback" not in err
    return code, json.loads(out), err


def _verdicts(report: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["channel"]: (c["key"], c["webhook"]) for c in report["channels"]}


@pytest.fixture
def config(db_url: str, sandbox: tuple[Sandbox, str], tmp_path: Path) -> Path:
    path = tmp_path / "outbox.toml"
    path.write_text(config_toml(db_url, sandbox[1], cloud_hook_auth=True))
    return path


HOOK_ENV = {"TEST_HOOK_USER": "hook-user", "TEST_HOOK_PASS": "hook-pass-long-enough-1"}


async def _set(config: Path, channel: str, url: str) -> tuple[int, str, str]:
    return await _outbox("set-webhook", "--config", str(config), channel, url, env=HOOK_ENV)


async def test_no_webhook_registered_fails_the_check(config: Path) -> None:
    code, report, _ = await _check(config, **HOOK_ENV)
    assert code == 1
    assert report["ok"] is False
    assert report["database"]["ok"] is True
    assert _verdicts(report) == {"onprem": ("ok", "none"), "cloud": ("ok", "none")}


async def test_our_webhooks_pass_and_text_says_so(config: Path) -> None:
    for channel in ("onprem", "cloud"):
        code, _, err = await _set(config, channel, f"{HOOKS}/{channel}")
        assert code == 0, err
    code, report, _ = await _check(config, **HOOK_ENV)
    assert code == 0, report
    assert _verdicts(report) == {"onprem": ("ok", "ours"), "cloud": ("ok", "ours")}
    code, out, _ = await _outbox("check", "--config", str(config), env=HOOK_ENV)
    assert code == 0
    assert f"channel cloud: key ok, webhook ours ({HOOKS}/cloud)" in out
    assert "hook-pass" not in out


async def test_a_webhook_set_elsewhere_is_other(config: Path, sandbox: tuple[Sandbox, str]) -> None:
    await _set(config, "onprem", "http://127.0.0.1:18080/somewhere-else")
    await _set(config, "cloud", f"{HOOKS}/cloud")
    code, report, _ = await _check(config, **HOOK_ENV)
    assert code == 1
    assert _verdicts(report) == {"onprem": ("ok", "other"), "cloud": ("ok", "ours")}
    # Registered with other Basic-auth credentials: our webhooks would be refused.
    code, report, _ = await _check(config, **{**HOOK_ENV, "TEST_HOOK_PASS": "another-password-22"})
    assert code == 1
    assert _verdicts(report)["cloud"] == ("ok", "other")
    assert "another-pass" not in json.dumps(report)


async def test_a_wrong_key_is_refused(config: Path) -> None:
    await _set(config, "cloud", f"{HOOKS}/cloud")
    code, report, _ = await _check(config, **HOOK_ENV, TEST_CLOUD_KEY="wrong-key-123")
    assert code == 1
    assert _verdicts(report)["cloud"] == ("refused", "unknown")
    assert "wrong-key-123" not in json.dumps(report)
    code, out, _ = await _outbox(
        "check", "--config", str(config), env={**HOOK_ENV, "TEST_CLOUD_KEY": "wrong-key-123"}
    )
    assert "channel cloud: key REFUSED, webhook UNKNOWN: HTTP 401" in out


async def test_a_rotation_that_dropped_the_webhook_is_caught(
    config: Path, sandbox: tuple[Sandbox, str]
) -> None:
    api, _ = sandbox
    for channel in ("onprem", "cloud"):
        await _set(config, channel, f"{HOOKS}/{channel}")
    api.accept_key("cloud-key-2", "cloud")
    api.revoke_key("cloud-key")  # as the Partner API does: the new key starts without one
    code, report, _ = await _check(config, **HOOK_ENV, TEST_CLOUD_KEY="cloud-key-2")
    assert code == 1
    assert _verdicts(report)["cloud"] == ("ok", "none")


async def test_skip_api_checks_only_configuration_and_database(config: Path) -> None:
    code, out, err = await _outbox("check", "--config", str(config), "--skip-api", env=HOOK_ENV)
    assert code == 0, err
    assert "channel" not in out.replace("channels in the file", "")


async def test_set_webhook_refuses_another_channels_path(
    config: Path, sandbox: tuple[Sandbox, str]
) -> None:
    code, _, err = await _set(config, "cloud", f"{HOOKS}/onprem")
    assert code == 2
    assert err.strip() == (
        "outbox: configuration error: URL path /webhooks/onprem is channel 'onprem''s webhook,"
        " not 'cloud''s: use .../webhooks/cloud"
    )
    assert sandbox[0].webhook("cloud-key") is None  # nothing was registered
