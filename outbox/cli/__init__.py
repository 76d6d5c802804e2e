"""The `outbox` command: parse, call, exit code. Every option has an OUTBOX_* fallback.

Each group of verbs adds its own subcommands: `daemon` (run, migrate, check), `operator`
(show, stats, replay, cancel, purge), `tools` (set-webhook, sandbox, demo), `channels`
(channels ..., keys ...: the channel registry) and `templates` (list, resume).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from outbox import __version__
from outbox.cli import channels, daemon, helptext, operator, templates, tools
from outbox.cli.runtime import EXIT_CONFIG, EXIT_ERROR, env_default
from outbox.errors import ConfigError, DatabaseError, OutboxError

# As outbox.config_loader has them (a test holds them equal); not imported from there, so that
# `outbox --help` does not load the configuration code.
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="outbox",
        description="WhatsApp message-outbox daemon: sends rows of outbox.messages via 360dialog.",
    )
    parser.add_argument("--version", action="version", version=f"outbox {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    # The global options go before the verb or after it (`outbox --config X stats`, `outbox
    # stats --config X`): the verbs' copies default to nothing, so one given before is kept.
    options: tuple[tuple[str, str, dict[str, Any]], ...] = (
        ("--config", "CONFIG", {"type": Path, "help": "TOML configuration file"}),
        (
            "--log-level",
            "LOG_LEVEL",
            {"choices": LOG_LEVELS, "type": str.lower, "help": "log level, in any case"},
        ),
        (
            "--log-format",
            "LOG_FORMAT",
            {
                "choices": LOG_FORMATS,
                "type": str.lower,
                "help": "log format; auto is JSON unless stderr is a terminal",
            },
        ),
    )
    for where, default in ((parser, None), (common, argparse.SUPPRESS)):
        for flag, env, kwargs in options:
            env_default(where, flag, env=env, default=default, **kwargs)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    daemon.add_parsers(commands, common)
    operator.add_parsers(commands, common)
    tools.add_parsers(commands, common)
    channels.add_parsers(commands, common)  # channels ..., keys ... (issue 17)
    templates.add_parsers(commands, common)  # issue 18: the template registry
    helptext.decorate(parser)  # issue 19 §4: descriptions, defaults and an example per verb
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    if not (sys.argv[1:] if argv is None else argv):
        # Bare `outbox`: the help, not argparse's one-line complaint; 2 as for any usage error.
        parser.print_help()
        return EXIT_CONFIG
    args = parser.parse_args(argv)
    from outbox import logconfig

    problem = _bad_log_option(args)
    if problem:
        print(f"outbox: configuration error: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    logconfig.configure(args.log_level or "info", args.log_format or "auto")
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"outbox: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except DatabaseError as exc:
        from outbox.db.errors import describe

        print(f"outbox: error: {describe(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except OutboxError as exc:
        print(f"outbox: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_ERROR
    return code


def _bad_log_option(args: argparse.Namespace) -> str | None:
    """argparse checks choices on the command line, not on a default: OUTBOX_LOG_LEVEL=loud
    (a default here) is checked here, named, with what is allowed."""
    for name, allowed in (("log_level", LOG_LEVELS), ("log_format", LOG_FORMATS)):
        value = getattr(args, name, None)
        if value is not None and value not in allowed:
            return f"OUTBOX_{name.upper()} must be one of {', '.join(allowed)}, got {value!r}"
    return None
