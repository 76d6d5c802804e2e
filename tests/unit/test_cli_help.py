"""Every verb's --help has a description, its defaults and an example that parses
(issue 19 §4); bare `outbox` prints the help."""

from __future__ import annotations

import argparse
import io
import re
import shlex
from collections.abc import Iterator
from contextlib import redirect_stdout

import pytest

from outbox.cli import build_parser, main
from outbox.cli.helptext import EXAMPLES


def _verbs(
    parser: argparse.ArgumentParser, path: str = ""
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                verb = f"{path} {name}".strip()
                yield verb, sub
                yield from _verbs(sub, verb)


VERBS = dict(_verbs(build_parser()))


def test_the_loop_sees_every_verb() -> None:
    assert {"run", "check", "stats", "channels add", "keys rotate", "templates resume"} <= set(
        VERBS
    )


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_has_a_description_and_an_example(verb: str) -> None:
    text = VERBS[verb].format_help()
    assert VERBS[verb].description, verb
    assert "\nexample:\n  outbox " in text or "\nexample:\n  OUTBOX_" in text


@pytest.mark.parametrize("verb", sorted(EXAMPLES))
def test_every_example_parses(verb: str) -> None:
    words = shlex.split(EXAMPLES[verb].split("|")[0].split(">")[0])
    while re.match(r"[A-Z_]+=", words[0]):  # an environment assignment before the command
        words.pop(0)
    assert words[0] == "outbox"
    assert " ".join(words[1:]).startswith(verb)
    build_parser().parse_args(words[1:])  # SystemExit (a failure) if it does not


def test_defaults_are_shown_but_never_a_secrets() -> None:
    text = VERBS["stats"].format_help()
    assert "(default: 5.0)" in text
    assert "default: sandbox-key" not in VERBS["sandbox"].format_help()


def test_bare_outbox_prints_the_help() -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main([]) == 2
    assert out.getvalue().startswith("usage: outbox")
    assert "COMMAND" in out.getvalue()


@pytest.mark.parametrize(
    ("words", "env", "config", "level"),
    [
        ("--config a.toml stats", {}, "a.toml", None),  # before the verb
        ("stats --config a.toml", {}, "a.toml", None),  # after it
        ("--config a.toml channels list", {}, "a.toml", None),  # before a nested verb
        ("--config a.toml stats --config b.toml", {}, "b.toml", None),  # the later one wins
        ("--log-level DEBUG stats", {}, None, "debug"),
        ("stats", {"OUTBOX_CONFIG": "env.toml"}, "env.toml", None),
        ("--config a.toml stats", {"OUTBOX_CONFIG": "env.toml"}, "a.toml", None),  # flag > env
    ],
)
def test_global_options_go_before_or_after_the_verb(
    words: str,
    env: dict[str, str],
    config: str | None,
    level: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("OUTBOX_CONFIG", "OUTBOX_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = build_parser().parse_args(shlex.split(words))
    assert (None if args.config is None else str(args.config), args.log_level) == (config, level)
