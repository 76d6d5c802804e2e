"""`outbox sandbox`: the local imitation of 360dialog's API (and, if asked, its Partner API)
on a port until stopped."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from outbox.cli.runtime import EXIT_OK, env_default, run_async
from outbox.errors import ConfigError, OutboxError

if TYPE_CHECKING:  # the sandbox (aiohttp's server) is imported only when the verb runs
    from outbox.sandbox import PartnerHub

SANDBOX_KEYS_ENV = "OUTBOX_SANDBOX_KEYS"  # the sandbox's KEY=LABEL pairs, when no file is given


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    sandbox = commands.add_parser(
        "sandbox",
        parents=[common],
        help="run a local imitation of 360dialog's API",
        # The old `--keys KEY=LABEL` must fail, not be taken as an abbreviation of --keys-file.
        allow_abbrev=False,
    )
    env_default(sandbox, "--host", env="SANDBOX_HOST", default="127.0.0.1", help="bind address")
    env_default(sandbox, "--port", env="SANDBOX_PORT", default=8081, type=int, help="port")
    # Issue 19 §3: keys never on the command line, which every local user can read (ps).
    env_default(
        sandbox,
        "--keys-file",
        env="SANDBOX_KEYS_FILE",
        type=Path,
        help="a file of KEY=LABEL pairs (one a line, or comma-separated) the sandbox accepts as "
        f"D360-API-KEY; without it, the pairs in {SANDBOX_KEYS_ENV}, else sandbox-key=sandbox",
    )
    env_default(
        sandbox,
        "--latency-ms",
        env="SANDBOX_LATENCY_MS",
        default=0.0,
        type=float,
        help="delay before answering each send and webhook-configuration request",
    )
    env_default(
        sandbox,
        "--status-delays-ms",
        env="SANDBOX_STATUS_DELAYS_MS",
        default="50,100,150",
        help="delays of the sent, delivered and read notifications after acceptance",
    )
    sandbox.add_argument("--reorder", action="store_true", help="shuffle each message's statuses")
    sandbox.add_argument("--duplicate", action="store_true", help="post every notification twice")
    env_default(
        sandbox,
        "--partner-secret-env",
        env="SANDBOX_PARTNER_SECRET_ENV",
        help="the environment variable holding a partner secret: every body the sandbox posts "
        "is then signed with it (x-360dialog-signature), as 360dialog signs a partner's",
    )
    env_default(
        sandbox,
        "--partner-id",
        env="SANDBOX_PARTNER_ID",
        help="also serve 360dialog's Partner API (/api/v2/partners/ID/...) for this partner id, "
        "to try `outbox channels import` and `rotate-key`; needs --partner-key-env",
    )
    env_default(
        sandbox,
        "--partner-key-env",
        env="SANDBOX_PARTNER_KEY_ENV",
        help="the environment variable holding the Partner API key the hub accepts (X-API-Key)",
    )
    env_default(
        sandbox,
        "--partner-channels",
        env="SANDBOX_PARTNER_CHANNELS",
        default=10,
        type=int,
        help="how many numbers the partner has (ids CH00000, CH00001, ...)",
    )
    env_default(
        sandbox,
        "--partner-clients",
        env="SANDBOX_PARTNER_CLIENTS",
        default=1,
        type=int,
        help="how many clients the numbers are spread over (ids CL000, CL001, ...)",
    )
    sandbox.set_defaults(func=_sandbox)


def _sandbox(args: argparse.Namespace) -> int:
    from outbox import sandbox

    keys = _sandbox_keys(args.keys_file)
    try:
        delays = tuple(float(d) / 1000 for d in str(args.status_delays_ms).split(","))
    except ValueError:
        raise ConfigError("--status-delays-ms: expected three numbers like 50,100,150") from None
    if len(delays) != 3:
        raise ConfigError("--status-delays-ms: expected three numbers like 50,100,150")
    partner_secret = None
    if args.partner_secret_env:
        partner_secret = os.environ.get(args.partner_secret_env) or None
        if partner_secret is None:
            raise ConfigError(f"--partner-secret-env: {args.partner_secret_env} is not set")
    hub = _partner_hub(args)

    def announce(base_url: str) -> None:
        print(
            f"sandbox: serving on {base_url} (On-Premise /v1/messages, Cloud /messages)",
            file=sys.stderr,
        )
        if hub is not None:
            print(
                f"sandbox: Partner API for {hub.partner_id} at {base_url}/api/v2 "
                f"({hub.channels} numbers over {hub.clients} client{'s' * (hub.clients != 1)})",
                file=sys.stderr,
            )

    async def main(stop: asyncio.Event) -> int:
        try:
            await _serve_sandbox(stop)
        except OSError as exc:
            # A port in use is the usual reason: one line, no traceback (issue 19 §4).
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise OutboxError(
                f"sandbox: cannot listen on {args.host}:{args.port}: {reason}"
            ) from None
        return EXIT_OK

    async def _serve_sandbox(stop: asyncio.Event) -> None:
        await sandbox.serve(
            args.host,
            args.port,
            keys,
            latency=args.latency_ms / 1000,
            status_delays=(delays[0], delays[1], delays[2]),
            reorder=args.reorder,
            duplicate=args.duplicate,
            stop=stop,
            partner_secret=partner_secret,
            hub=hub,
            announce=announce,
        )

    return run_async(main)


def _partner_hub(args: argparse.Namespace) -> PartnerHub | None:
    """The Partner API to serve, if asked for; its key from the environment, never argv."""
    from outbox import sandbox

    if not args.partner_id:
        if args.partner_key_env:
            raise ConfigError("--partner-key-env needs --partner-id")
        return None
    if not args.partner_key_env:
        raise ConfigError("--partner-id needs --partner-key-env (the Partner API key's variable)")
    key = os.environ.get(args.partner_key_env)
    if not key:
        raise ConfigError(f"--partner-key-env: {args.partner_key_env} is not set")
    if not 0 <= args.partner_channels <= 100_000 or not 1 <= args.partner_clients <= 1000:
        raise ConfigError("--partner-channels: 0 to 100000; --partner-clients: 1 to 1000")
    return sandbox.PartnerHub(args.partner_id, key, args.partner_channels, args.partner_clients)


def _sandbox_keys(path: Path | None) -> dict[str, str]:
    """The sandbox's keys, from a file or the environment (never argv, issue 19 §3)."""
    if path is not None:
        try:
            text, where = path.read_text(encoding="utf-8"), f"--keys-file {path}"
        except OSError as exc:
            raise ConfigError(f"cannot read --keys-file {path}: {exc.strerror}") from exc
    else:
        text, where = os.environ.get(SANDBOX_KEYS_ENV, "sandbox-key=sandbox"), SANDBOX_KEYS_ENV
    keys: dict[str, str] = {}
    for pair in text.replace("\n", ",").split(","):
        key, _, label = pair.strip().partition("=")
        if key:
            keys[key] = label or key[:4] + "…"
    if not keys:
        raise ConfigError(f"{where}: no KEY=LABEL pair")
    return keys
