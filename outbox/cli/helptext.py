"""Every verb's `--help` (issue 19 §4): a description, the defaults, and an example.

Examples live here, one place for all verbs, so that `decorate` can give every subcommand one
and a test can loop over the parser and find none missing.
"""

from __future__ import annotations

import argparse

EXAMPLES: dict[str, str] = {
    "run": "outbox run --config /etc/outbox/outbox.toml --role sender,reconciler,web",
    "migrate": "outbox migrate --config /etc/outbox/outbox.toml",
    "check": "outbox check --config outbox.toml --json | jq '.channels[] | select(.ok | not)'",
    "show": "outbox show 4711 --json | jq .message.state",
    "stats": "outbox stats --recent-minutes 15 --json | jq '.channels[].states.queued'",
    "replay": "outbox replay --channel shop-de --error-code http_500 --since 2h --dry-run",
    "cancel": "outbox cancel --channel shop-de --state queued --until 1d --dry-run --json",
    "purge": "outbox purge --older-than 30d --dry-run --json",
    "set-webhook": "outbox set-webhook shop-de https://outbox.example.com/webhooks/shop-de",
    "sandbox": "outbox sandbox --port 8081 --keys-file sandbox-keys.txt --latency-ms 20",
    "demo": "outbox demo --messages 500",
    "channels": "outbox channels list --json",
    "channels rotate-key": "outbox channels rotate-key shop-de --settle 60",
    "channels import": "outbox channels import --id-prefix hub- --filter status=ready --json",
    "channels list": "outbox channels list --json | jq '.[].id'",
    "channels show": "outbox channels show shop-de --json",
    "channels add": "outbox channels add shop-at --dialect cloud --base-url "
    "https://waba-v2.360dialog.io --api-key-env D360_KEY_SHOP_AT",
    "channels update": "outbox channels update shop-at --rate-per-second 40",
    "channels disable": "outbox channels disable shop-at",
    "channels enable": "outbox channels enable shop-at",
    "channels remove": "outbox channels remove shop-at --cancel-open",
    "keys": "outbox keys generate > /etc/outbox/master.key",
    "keys generate": "outbox keys generate > /etc/outbox/master.key",
    "keys check": "OUTBOX_SECRET_KEY_FILE=/etc/outbox/master.key outbox keys check",
    "keys rotate": "OUTBOX_SECRET_KEY_FILE=/etc/outbox/master.keys outbox keys rotate",
    "templates": "outbox templates list --json",
    "templates list": "outbox templates list --json | jq '.[] | select(.held_rows > 0)'",
    "templates resume": "outbox templates resume order_update --language de",
}
# Defaults of these options are never printed: one set from the environment may be a secret.
_SECRET_WORDS = ("key", "secret", "password", "token")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown where there is one worth saying; the example epilog kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        quiet = action.default in (None, False, [], argparse.SUPPRESS)
        if quiet or any(word in action.dest for word in _SECRET_WORDS):
            return action.help
        return super()._get_help_string(action)


def decorate(parser: argparse.ArgumentParser, path: str = "") -> None:
    """Give `parser` and every subcommand under it the formatter, a description (its one-line
    help when it has none) and its example."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help for a in action._choices_actions}
        for name, sub in action.choices.items():
            verb = f"{path} {name}".strip()
            if not sub.description and helps.get(name):
                sub.description = str(helps[name])[:1].upper() + str(helps[name])[1:] + "."
            if verb in EXAMPLES:
                sub.epilog = f"example:\n  {EXAMPLES[verb]}"
            decorate(sub, verb)
