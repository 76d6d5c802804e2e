"""Which channels a partner webhook's Basic-auth credentials vouch for, and where its parts go,
from an index built again only when the channels change (issue 16)."""

from __future__ import annotations

import base64
import dataclasses

import pytest

from outbox.config import ChannelConfig, Secret
from outbox.domain.models import Dialect
from outbox.http.partner_index import PartnerIndex


def _channel(id_: str, user: str | None, password: str | None, number: str) -> ChannelConfig:
    return ChannelConfig(
        id_,
        Dialect.CLOUD,
        "https://waba-v2.example",
        Secret("k"),
        phone_number_id=number,
        waba_id="waba-1",
        webhook_username=None if user is None else Secret(user),
        webhook_password=None if password is None else Secret(password),
    )


def _basic(credentials: bytes) -> str:
    return "Basic " + base64.b64encode(credentials).decode()


CHANNELS = {
    "a": _channel("a", "hooks-a", "pass:with:colons-0123456789", "111"),
    "b": _channel("b", "hooks-b", "other-pass-0123456789", "222"),
    "twin": _channel("twin", "hooks-b", "other-pass-0123456789", "333"),
    "closed": _channel("closed", None, None, "444"),
}


@pytest.mark.parametrize(
    ("header", "vouched"),
    [
        (_basic(b"hooks-a:pass:with:colons-0123456789"), {"a"}),
        (_basic(b"hooks-b:other-pass-0123456789"), {"b", "twin"}),  # shared credentials
        (_basic(b"hooks-a:other-pass-0123456789"), set()),  # another channel's password
        (_basic(b"hooks-a:pass:with:colons"), set()),  # a prefix of the password
        (_basic(b"hooks-a"), set()),  # no colon
        (_basic(b":"), set()),  # a channel without credentials is not vouched for by none
        ("Bearer hooks-a:pass", set()),
        ("Basic !!!not-base64", set()),
        ("", set()),
        (None, set()),
    ],
)
def test_credentials_vouch_for_exactly_their_channels(
    header: str | None, vouched: set[str]
) -> None:
    assert PartnerIndex(dict(CHANNELS)).current().vouched(header) == vouched


def test_a_change_to_the_channels_is_seen_by_the_next_body() -> None:
    channels = dict(CHANNELS)
    index = PartnerIndex(channels)
    old = _basic(b"hooks-a:pass:with:colons-0123456789")
    assert index.current().vouched(old) == {"a"}
    assert index.current().directory.by_number.get("555") is None
    # The registry changes the mapping in place: a rotated password, a new number.
    channels["a"] = dataclasses.replace(
        channels["a"], webhook_password=Secret("rotated-0123456789")
    )
    channels["new"] = _channel("new", None, None, "555")
    assert index.current().vouched(old) == set()
    assert index.current().vouched(_basic(b"hooks-a:rotated-0123456789")) == {"a"}
    assert index.current().directory.by_number["555"] == "new"
    del channels["b"]
    assert index.current().vouched(_basic(b"hooks-b:other-pass-0123456789")) == {"twin"}
    assert "b" not in index.current().directory.by_account["waba-1"]
