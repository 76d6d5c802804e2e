"""The API's answers to `outbox set-webhook`, with every credential masked before printing."""

from __future__ import annotations

from typing import Any

from outbox.config import ChannelConfig

MASK = "********"
# Keys whose values are credentials whatever they hold, at any depth of the answer.
_SECRET_KEYS = frozenset({"authorization", "password", "api_key", "d360-api-key", "token"})


def masked_answer(body: Any, channel: ChannelConfig) -> Any:
    """The API's answer with every credential masked, wherever it is echoed.

    The API echoes the registered headers (the Basic-auth one is the webhook password in
    base64), but not always at the top: a nested config, a list of webhooks, or an error that
    quotes the request. So the whole answer is walked: every `headers` object and every value
    under a credential-like key is masked, and any string (keys and text bodies included) that
    contains one of the channel's credentials, raw or as the Basic token, has it replaced.
    """
    secrets = _credentials(channel)
    return _mask(body, secrets)


def _credentials(channel: ChannelConfig) -> list[str]:
    from outbox.http.api_client import webhook_config  # the header exactly as it was sent

    raw = [
        s.reveal()
        for s in (channel.api_key, channel.webhook_username, channel.webhook_password)
        if s is not None
    ]
    header = webhook_config(channel, "").get("headers", {}).get("Authorization")
    derived = [] if header is None else [header, header.partition(" ")[2]]
    # Longest first, so that a secret containing another is masked whole.
    return sorted({s for s in [*raw, *derived] if s}, key=len, reverse=True)


def _mask(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, MASK)
        return value
    if isinstance(value, list):
        return [_mask(v, secrets) for v in value]
    if isinstance(value, dict):
        masked: dict[Any, Any] = {}
        for key, item in value.items():
            name = _mask(key, secrets)
            if str(key).lower() in _SECRET_KEYS and item is not None:
                masked[name] = MASK
            elif str(key).lower() == "headers" and isinstance(item, dict):
                masked[name] = {_mask(k, secrets): MASK for k in item}
            else:
                masked[name] = _mask(item, secrets)
        return masked
    return value
