from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from outbox.domain.models import SentAs
from outbox.domain.window import WINDOW, Content, WindowClosed, choose_content, window_open

NOW = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)
MARGIN = timedelta(minutes=5)
TICK = timedelta(microseconds=1)

TEXT: dict[str, Any] = {"type": "text", "text": {"body": "Hallo"}}
IMAGE: dict[str, Any] = {"type": "image", "image": {"link": "https://example.com/a.png"}}
TEMPLATE: dict[str, Any] = {
    "type": "template",
    "template": {"name": "order_shipped", "language": {"policy": "deterministic", "code": "de"}},
}
HSM: dict[str, Any] = {
    "type": "hsm",
    "hsm": {"namespace": "ns", "element_name": "order_shipped", "localizable_params": []},
}
FALLBACK: dict[str, Any] = {
    "type": "template",
    "template": {"name": "reengage", "language": {"policy": "deterministic", "code": "de"}},
}

# The last inbound time at which `NOW` sits exactly on the closing boundary, for MARGIN.
AT_BOUNDARY = NOW - WINDOW + MARGIN
OPEN_AT = NOW - timedelta(hours=1)  # well inside the window
CLOSED_AT = NOW - timedelta(hours=30)  # well outside it


def test_the_window_is_24_hours() -> None:
    assert timedelta(hours=24) == WINDOW


@pytest.mark.parametrize(
    ("last_inbound_at", "margin", "expected"),
    [
        pytest.param(None, MARGIN, False, id="no-inbound"),
        pytest.param(None, timedelta(0), False, id="no-inbound-no-margin"),
        pytest.param(AT_BOUNDARY, MARGIN, False, id="exactly-at-boundary"),
        pytest.param(AT_BOUNDARY + TICK, MARGIN, True, id="one-microsecond-before"),
        pytest.param(AT_BOUNDARY - TICK, MARGIN, False, id="one-microsecond-after"),
        pytest.param(NOW - WINDOW, timedelta(0), False, id="no-margin-at-24h"),
        pytest.param(NOW - WINDOW + TICK, timedelta(0), True, id="no-margin-just-inside"),
        pytest.param(NOW - timedelta(hours=23, minutes=50), MARGIN, True, id="outside-margin"),
        pytest.param(NOW - timedelta(hours=23, minutes=56), MARGIN, False, id="inside-margin"),
        pytest.param(NOW - timedelta(hours=23, minutes=56), timedelta(0), True, id="margin-0"),
        pytest.param(
            NOW - timedelta(hours=23, minutes=56), timedelta(minutes=10), False, id="larger-margin"
        ),
        pytest.param(
            NOW - timedelta(hours=23, minutes=56), timedelta(hours=1), False, id="margin-1h"
        ),
        pytest.param(NOW - timedelta(hours=22), timedelta(hours=1), True, id="margin-1h-open"),
        pytest.param(NOW, MARGIN, True, id="just-now"),
        pytest.param(NOW + timedelta(minutes=3), MARGIN, True, id="future-clock-skew"),
        pytest.param(NOW + timedelta(days=2), MARGIN, True, id="far-future-clock-skew"),
        pytest.param(OPEN_AT, MARGIN, True, id="an-hour-ago"),
        pytest.param(CLOSED_AT, MARGIN, False, id="thirty-hours-ago"),
        pytest.param(NOW - timedelta(days=400), MARGIN, False, id="very-old"),
        pytest.param(datetime(1970, 1, 1, tzinfo=UTC), MARGIN, False, id="epoch"),
    ],
)
def test_window_open(last_inbound_at: datetime | None, margin: timedelta, expected: bool) -> None:
    assert window_open(last_inbound_at, NOW, margin) is expected


def test_window_open_compares_instants_across_time_zones() -> None:
    berlin = AT_BOUNDARY.astimezone(ZoneInfo("Europe/Berlin"))
    assert window_open(berlin + TICK, NOW, MARGIN) is True
    assert window_open(berlin, NOW, MARGIN) is False


FF, TPL, FB = SentAs.FREEFORM, SentAs.TEMPLATE, SentAs.FALLBACK_TEMPLATE
LIST_PAYLOAD = ["template"]
NO_TYPE: dict[str, Any] = {"template": {}}
CAPITALISED: dict[str, Any] = {"type": "Template", "Template": {}}


@pytest.mark.parametrize(
    ("payload", "fallback", "planned", "last_inbound_at", "sent_as"),
    [
        # Templates go out at any time, as themselves.
        pytest.param(TEMPLATE, None, None, None, TPL, id="template-no-inbound"),
        pytest.param(TEMPLATE, None, None, CLOSED_AT, TPL, id="template-closed"),
        pytest.param(TEMPLATE, None, None, OPEN_AT, TPL, id="template-open"),
        pytest.param(TEMPLATE, FALLBACK, None, CLOSED_AT, TPL, id="template-ignores-fallback"),
        pytest.param(TEMPLATE, FALLBACK, FB, CLOSED_AT, TPL, id="template-ignores-planned"),
        pytest.param(HSM, None, None, None, TPL, id="hsm-no-inbound"),
        pytest.param(HSM, FALLBACK, None, CLOSED_AT, TPL, id="hsm-closed"),
        pytest.param(HSM, None, None, OPEN_AT, TPL, id="hsm-open"),
        # Free-form inside the window.
        pytest.param(TEXT, None, None, OPEN_AT, FF, id="text-open"),
        pytest.param(TEXT, FALLBACK, None, OPEN_AT, FF, id="text-open-with-fallback"),
        pytest.param(IMAGE, None, None, OPEN_AT, FF, id="image-open"),
        pytest.param(TEXT, None, FF, OPEN_AT, FF, id="planned-freeform-open"),
        pytest.param(TEXT, None, None, AT_BOUNDARY + TICK, FF, id="text-just-inside"),
        pytest.param(TEXT, None, None, NOW + timedelta(minutes=2), FF, id="text-clock-skew"),
        # Free-form outside the window: the fallback, when there is one.
        pytest.param(TEXT, FALLBACK, None, CLOSED_AT, FB, id="closed-fallback"),
        pytest.param(TEXT, FALLBACK, None, None, FB, id="no-inbound-fallback"),
        pytest.param(TEXT, FALLBACK, None, AT_BOUNDARY, FB, id="boundary-fallback"),
        pytest.param(IMAGE, FALLBACK, FF, CLOSED_AT, FB, id="planned-freeform-closed"),
        # Once sent as the fallback, always the fallback: even if the user wrote meanwhile.
        pytest.param(TEXT, FALLBACK, FB, OPEN_AT, FB, id="planned-fallback-sticks-open"),
        pytest.param(TEXT, FALLBACK, FB, CLOSED_AT, FB, id="planned-fallback-closed"),
        pytest.param(TEXT, FALLBACK, FB, None, FB, id="planned-fallback-no-inbound"),
        # A planned fallback the row no longer has: the normal rule.
        pytest.param(TEXT, None, FB, OPEN_AT, FF, id="planned-fallback-gone-open"),
        # Anything but a template object is free-form and needs the window.
        pytest.param("Hallo", None, None, OPEN_AT, FF, id="string-payload-open"),
        pytest.param(LIST_PAYLOAD, None, None, OPEN_AT, FF, id="list-payload-open"),
        pytest.param(LIST_PAYLOAD, FALLBACK, None, CLOSED_AT, FB, id="list-payload-closed"),
        pytest.param(None, FALLBACK, None, CLOSED_AT, FB, id="none-payload-closed"),
        pytest.param(NO_TYPE, None, None, OPEN_AT, FF, id="no-type-open"),
        pytest.param(CAPITALISED, FALLBACK, None, CLOSED_AT, FB, id="type-case-sensitive"),
    ],
)
def test_choose_content(
    payload: Any,
    fallback: Any,
    planned: SentAs | None,
    last_inbound_at: datetime | None,
    sent_as: SentAs,
) -> None:
    chosen = choose_content(
        payload,
        fallback,
        planned=planned,
        last_inbound_at=last_inbound_at,
        now=NOW,
        margin=MARGIN,
    )
    assert isinstance(chosen, Content)
    assert chosen.sent_as is sent_as
    # The fallback's own object when sent as the fallback; the row's payload otherwise.
    assert chosen.payload is (fallback if sent_as is FB else payload)


@pytest.mark.parametrize(
    ("payload", "planned", "last_inbound_at", "detail"),
    [
        pytest.param(
            TEXT,
            None,
            None,
            "no inbound message from this recipient is on record",
            id="no-inbound",
        ),
        pytest.param(
            TEXT,
            None,
            CLOSED_AT,
            "the recipient last wrote at 2025-03-13T06:00:00+00:00",
            id="closed",
        ),
        pytest.param(
            IMAGE,
            None,
            AT_BOUNDARY,
            "the recipient last wrote at 2025-03-13T12:05:00+00:00",
            id="exactly-at-boundary",
        ),
        pytest.param(
            TEXT,
            SentAs.FALLBACK_TEMPLATE,
            CLOSED_AT,
            "the recipient last wrote at 2025-03-13T06:00:00+00:00",
            id="planned-fallback-gone",
        ),
        pytest.param(
            TEXT,
            SentAs.FREEFORM,
            CLOSED_AT,
            "the recipient last wrote at 2025-03-13T06:00:00+00:00",
            id="planned-freeform",
        ),
        pytest.param(
            "Hallo",
            None,
            None,
            "no inbound message from this recipient is on record",
            id="string-payload",
        ),
        pytest.param(
            [TEMPLATE],
            None,
            CLOSED_AT,
            "the recipient last wrote at 2025-03-13T06:00:00+00:00",
            id="list-of-template-is-not-a-template",
        ),
    ],
)
def test_choose_content_window_closed_without_fallback(
    payload: Any, planned: SentAs | None, last_inbound_at: datetime | None, detail: str
) -> None:
    chosen = choose_content(
        payload,
        None,
        planned=planned,
        last_inbound_at=last_inbound_at,
        now=NOW,
        margin=MARGIN,
    )
    assert chosen == WindowClosed(detail)


@pytest.mark.parametrize(
    ("margin", "expected"),
    [
        pytest.param(timedelta(0), SentAs.FREEFORM, id="no-margin"),
        pytest.param(timedelta(minutes=5), SentAs.FREEFORM, id="margin-inside"),
        pytest.param(timedelta(minutes=10), SentAs.FALLBACK_TEMPLATE, id="margin-outside"),
    ],
)
def test_choose_content_uses_the_margin(margin: timedelta, expected: SentAs) -> None:
    chosen = choose_content(
        TEXT,
        FALLBACK,
        planned=None,
        last_inbound_at=NOW - timedelta(hours=23, minutes=52),
        now=NOW,
        margin=margin,
    )
    assert isinstance(chosen, Content)
    assert chosen.sent_as is expected
