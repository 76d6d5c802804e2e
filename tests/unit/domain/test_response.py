from __future__ import annotations

import json
from typing import Any

import pytest

from outbox.domain.response import (
    Accepted,
    Rejected,
    Unreadable,
    parse_retry_after,
    parse_send_response,
)
from tests.paths import WEBHOOK_FIXTURES

FIXTURES = WEBHOOK_FIXTURES

_130429_DETAILS = (
    "Message failed to send because there were too many messages sent from this phone number "
    "in a short period of time"
)

# (fixture, HTTP status from INDEX.md) -> expected outcome.
FIXTURE_CASES: list[tuple[str, int, Accepted | Rejected]] = [
    (
        "cloud__send-response__200-basic.json",
        200,
        Accepted("wamid.gBGGSFcCNEOPAgkO_KJ55r4w_ww", "48XXXXXXXXX"),
    ),
    (
        "cloud__send-response__201-contact-bsuid.json",
        201,
        Accepted("157b5e14568e8", None, "US.1234"),
    ),
    ("onprem__send-response__201-id-only.json", 201, Accepted("157b5e14568e8", None)),
    ("onprem__send-response__201-with-meta.json", 201, Accepted("sdkjfgksjfgoksdflgs", None)),
    (
        "onprem__send-response__wa-id-differs-from-input.json",
        201,
        Accepted("157b5e14568e8", "551100000001"),
    ),
    (
        "onprem__send-response__200-empty-messages.json",
        200,
        Rejected(200, None, "response has no message id", None),
    ),
    (
        "cloud__send-error__130429-rate-limit.json",
        500,
        Rejected(500, 130429, "(#130429) Rate limit hit", _130429_DETAILS),
    ),
    (
        "cloud__send-error__131056-pair-rate-limit.json",
        403,
        Rejected(
            403, 131056, "(#131056) (Business Account, Consumer Account) pair rate limit hit", None
        ),
    ),
    (
        "cloud__send-error__190-invalid-token.json",
        200,
        Rejected(200, 190, "Invalid OAuth access token - Cannot parse access token", None),
    ),
    (
        "onprem__send-error__200-with-errors-232.json",
        200,
        Rejected(200, 232, "Error Sending", None),
    ),
    (
        "onprem__send-error__404-1006-unknown-contact.json",
        404,
        Rejected(404, 1006, "Resource not found", "unknown contact"),
    ),
    ("onprem__send-error__429-no-code.json", 429, Rejected(429, None, "Too many requests", None)),
]


def load_fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("name", "status", "expected"),
    [pytest.param(*case, id=case[0].removesuffix(".json")) for case in FIXTURE_CASES],
)
def test_real_send_responses(name: str, status: int, expected: Accepted | Rejected) -> None:
    assert parse_send_response(status, load_fixture(name)) == expected


def test_every_send_fixture_is_in_the_table() -> None:
    on_disk = {
        p.name
        for p in FIXTURES.glob("*.json")
        if "send-response" in p.name or "send-error" in p.name
    }
    assert on_disk == {name for name, _, _ in FIXTURE_CASES}


@pytest.mark.parametrize(
    ("name", "status"),
    [
        pytest.param(name, status, id=name.removesuffix(".json"))
        for name, status, expected in FIXTURE_CASES
        if isinstance(expected, Rejected)
    ],
)
def test_retry_after_is_carried_on_rejections(name: str, status: int) -> None:
    outcome = parse_send_response(status, load_fixture(name), 12.5)
    assert isinstance(outcome, Rejected)
    assert outcome.retry_after == 12.5


# --- 360dialog gateway errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("meta", "title"),
    [
        pytest.param(
            {
                "success": False,
                "httpCode": 400,
                "developerMessage": "You have exceeded the limit of 1 request every * seconds.",
            },
            "You have exceeded the limit of 1 request every * seconds.",
            id="camelCase",
        ),
        pytest.param(
            {
                "success": False,
                "http_code": 400,
                "developer_message": "Could not send message due to lack of payment",
            },
            "Could not send message due to lack of payment",
            id="snake_case",
        ),
        pytest.param(
            {"success": False, "httpCode": 404},
            "request rejected by 360dialog",
            id="no-message",
        ),
        pytest.param(
            {"success": False, "developerMessage": ""},
            "request rejected by 360dialog",
            id="empty-message",
        ),
    ],
)
def test_gateway_errors(meta: dict[str, Any], title: str) -> None:
    outcome = parse_send_response(400, {"meta": meta}, 3.0)
    # The HTTP status wins over `httpCode` in the body, which the docs show contradicting it.
    assert outcome == Rejected(400, None, title, None, 3.0)


def test_gateway_error_behind_a_2xx_is_still_a_rejection() -> None:
    body = {"meta": {"success": False, "developerMessage": "Your API has been disabled"}}
    assert parse_send_response(200, body) == Rejected(200, None, "Your API has been disabled", None)


def test_successful_meta_does_not_hide_a_message_id() -> None:
    body = {"meta": {"success": True}, "messages": [{"id": "wamid.1"}]}
    assert parse_send_response(200, body) == Accepted("wamid.1", None)


# --- bodies that are not JSON objects -----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        pytest.param(
            502,
            "<html>502 Bad Gateway</html>",
            Rejected(502, None, "HTTP 502", "<html>502 Bad Gateway</html>"),
            id="html",
        ),
        pytest.param(503, "", Rejected(503, None, "HTTP 503", None), id="empty-text"),
        pytest.param(
            200,
            "OK",
            Unreadable(200, "not a JSON object the parsers could read: 'OK'"),
            id="2xx-text",
        ),
        pytest.param(500, None, Rejected(500, None, "HTTP 500", "None"), id="json-null"),
        pytest.param(
            400,
            [{"id": "wamid.1"}],
            Rejected(400, None, "HTTP 400", "[{'id': 'wamid.1'}]"),
            id="json-array",
        ),
    ],
)
def test_non_object_bodies(status: int, body: Any, expected: Rejected) -> None:
    assert parse_send_response(status, body) == expected


# A 2xx the parsers refused: the id if the text names a usable one, else unreadable (unknown).
_NEST = "[" * 3000 + "]" * 3000


@pytest.mark.parametrize(
    ("text", "wamid"),
    [
        pytest.param('{"messages":[{"id":"wamid.A1"}],"x":' + _NEST + "}", "wamid.A1", id="after"),
        pytest.param('{"x":' + _NEST + ',"messages":[{"id":"wamid.A1"}]}', "wamid.A1", id="before"),
        pytest.param('{"messages": [ { "message_status": "accepted", "id" : "gBEG1" } ]', "gBEG1",
                     id="spaces-status-first-cut"),
        pytest.param(r'{"messages":[{"id":"wamid.\u0041"}]', "wamid.A", id="escaped"),
        pytest.param(r'{"messages":[{"id":"wamid.A\u0000"}]', None, id="nul-in-id"),
        pytest.param('{"messages":[{"id":"' + "w" * 300 + '"}]', None, id="over-long-id"),
        pytest.param('{"messages":[{"x":{"id":"wamid.A1"}}]', None, id="id-of-a-nested-object"),
        pytest.param('{"contacts":[{"wa_id":"4915"}],"id":"wamid.A1"}', None, id="no-messages"),
        pytest.param(r'{"error":{"message":"\"messages\":[{\"id\":\"wamid.A1\"}]"}}', None,
                     id="quoted-inside-a-string"),
        pytest.param('{"messages":[{"id":"wamid.', None, id="id-cut"),
        pytest.param("", None, id="empty"),
    ],
)  # fmt: skip
def test_a_success_the_parsers_refused(text: str, wamid: str | None) -> None:
    for cut in (False, True):
        outcome = parse_send_response(200, text, cut=cut)
        if wamid is None:
            assert isinstance(outcome, Unreadable), outcome
            assert outcome.reason
        else:
            assert outcome == Accepted(wamid, None)


def test_an_error_over_the_cap_says_so() -> None:
    outcome = parse_send_response(503, '{"error":', cut=True)
    assert isinstance(outcome, Rejected)
    assert outcome.title == "HTTP 503"
    assert outcome.detail == 'over 1 MiB, cut: {"error":'


def test_long_text_bodies_are_cut_to_500_characters() -> None:
    outcome = parse_send_response(500, "x" * 5000)
    assert isinstance(outcome, Rejected)
    assert outcome.detail == "x" * 500


# --- 2xx that are not acceptances ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            {"messages": []},
            Rejected(201, None, "response has no message id", None),
            id="messages-empty",
        ),
        pytest.param({}, Rejected(201, None, "response has no message id", None), id="empty"),
        pytest.param(
            {"messages": [{"id": ""}]},
            Rejected(201, None, "response has no message id", None),
            id="empty-id",
        ),
        pytest.param(
            {"messages": [{"id": 12345}]},
            Rejected(201, None, "response has no message id", None),
            id="numeric-id",
        ),
        pytest.param(
            {"messages": ["wamid.1"]},
            Rejected(201, None, "response has no message id", None),
            id="id-not-in-object",
        ),
        pytest.param(
            {"messages": {"id": "wamid.1"}},
            Rejected(201, None, "response has no message id", None),
            id="messages-object",
        ),
        pytest.param(
            {"errors": [{"code": 1013, "title": "User is not valid"}], "messages": [{"id": "x"}]},
            Rejected(201, 1013, "User is not valid", None),
            id="errors-beside-messages",
        ),
        pytest.param(
            {"error": {"code": 131026, "message": "(#131026) Message undeliverable"}},
            Rejected(201, 131026, "(#131026) Message undeliverable", None),
            id="cloud-error",
        ),
    ],
)
def test_2xx_without_a_usable_id_is_rejected(body: dict[str, Any], expected: Rejected) -> None:
    assert parse_send_response(201, body) == expected


def test_non_2xx_with_a_message_id_is_not_accepted() -> None:
    assert parse_send_response(500, {"messages": [{"id": "wamid.1"}]}) == Rejected(
        500, None, "HTTP 500", None
    )


# --- error details ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "title", "detail"),
    [
        pytest.param(
            {"errors": [{"code": "131026", "title": "t"}]}, 131026, "t", None, id="string-code"
        ),
        pytest.param(
            {"errors": [{"code": " 1013 ", "title": "t"}]}, 1013, "t", None, id="padded-string"
        ),
        pytest.param(
            {"error": {"code": "131026", "message": "m"}}, 131026, "m", None, id="cloud-string"
        ),
        pytest.param({"errors": [{"code": True, "title": "t"}]}, None, "t", None, id="bool-true"),
        pytest.param(
            {"error": {"code": False, "message": "m"}}, None, "m", None, id="cloud-bool-false"
        ),
        pytest.param({"errors": [{"code": 1.5, "title": "t"}]}, None, "t", None, id="float"),
        pytest.param({"errors": [{"code": "abc", "title": "t"}]}, None, "t", None, id="word"),
        pytest.param({"errors": [{"code": "-5", "title": "t"}]}, None, "t", None, id="negative"),
        pytest.param({"errors": [{"code": "²", "title": "t"}]}, None, "t", None, id="superscript"),
        pytest.param({"errors": [{"code": 0, "title": "t"}]}, 0, "t", None, id="zero"),
        # Found by the answers property (issue 14): integers were taken whatever their size.
        pytest.param({"errors": [{"code": -5, "title": "t"}]}, None, "t", None, id="int-negative"),
        pytest.param(
            {"error": {"code": 10**9, "message": "m"}}, None, "m", None, id="int-10-digits"
        ),
        pytest.param(
            {"error": {"code": 10**9 - 1, "message": "m"}}, 10**9 - 1, "m", None, id="int-9-digits"
        ),
        pytest.param({"errors": [{"code": 1}]}, 1, "error", None, id="no-title"),
        pytest.param({"errors": ["boom"]}, None, "error", None, id="error-not-object"),
        pytest.param(
            {"errors": [{"code": 1, "title": "t", "detail": "singular"}]},
            1,
            "t",
            "singular",
            id="detail-spelling",
        ),
        pytest.param(
            {"errors": [{"code": 1, "title": "t", "details": "plural", "detail": "singular"}]},
            1,
            "t",
            "plural",
            id="details-preferred",
        ),
        pytest.param(
            {"error": {"code": 100, "type": "OAuthException"}},
            100,
            "OAuthException",
            None,
            id="cloud-type-as-title",
        ),
        pytest.param({"error": {}}, None, "error", None, id="cloud-empty"),
        pytest.param(
            {"error": {"code": 100, "message": "m", "error_data": "not an object"}},
            100,
            "m",
            None,
            id="cloud-error-data-string",
        ),
        pytest.param({"errors": []}, None, "HTTP 400", None, id="errors-empty-list"),
    ],
)
def test_error_fields(
    body: dict[str, Any], code: int | None, title: str, detail: str | None
) -> None:
    assert parse_send_response(400, body) == Rejected(400, code, title, detail)


def test_contact_wa_id_is_trimmed_and_bsuid_is_not_a_wa_id() -> None:
    body = {"contacts": [{"wa_id": " 4915112345678 "}], "messages": [{"id": "w"}]}
    assert parse_send_response(200, body) == Accepted("w", "4915112345678")
    body = {"contacts": [{"user_id": "US.1"}], "messages": [{"id": "w"}]}
    assert parse_send_response(200, body) == Accepted("w", None, "US.1")


# --- Retry-After --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(None, None, id="absent"),
        pytest.param("5", 5.0, id="integer"),
        pytest.param("0", 0.0, id="zero"),
        pytest.param("1.5", 1.5, id="fraction"),
        pytest.param(" 7 ", 7.0, id="padded"),
        pytest.param("-1", None, id="negative"),
        pytest.param("", None, id="empty"),
        pytest.param("soon", None, id="word"),
        pytest.param("Wed, 21 Oct 2015 07:28:00 GMT", None, id="http-date"),
        pytest.param("nan", None, id="nan"),
        pytest.param("inf", None, id="inf"),
        pytest.param("Infinity", None, id="infinity"),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


# --- answers the database could not store (issue 14, item 1) -----------------------------------
# Every text taken from an answer is written to a `text` column: no NUL (PostgreSQL refuses it),
# no lone surrogate (no UTF-8 encodes it), and a bounded length, whatever the API sent.

_NUL = "\x00"
_LONG = "y" * 10_000


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        pytest.param(
            400,
            {"errors": [{"code": 100, "title": f"Bad{_NUL}Param", "details": f"a{_NUL}b"}]},
            Rejected(400, 100, "BadParam", "ab"),
            id="onprem-nul",
        ),
        pytest.param(
            400,
            {"error": {"code": 100, "message": f"x{_NUL}", "error_data": {"details": _NUL}}},
            Rejected(400, 100, "x", None),
            id="cloud-nul",
        ),
        pytest.param(
            400,
            {"meta": {"success": False, "developerMessage": f"no{_NUL}pe"}},
            Rejected(400, None, "nope", None),
            id="gateway-nul",
        ),
        pytest.param(
            502,
            f"<html>Bad Gateway{_NUL}\ufffd{_NUL}</html>",
            Rejected(502, None, "HTTP 502", "<html>Bad Gateway\ufffd</html>"),
            id="raw-nul",
        ),
        pytest.param(
            400,
            {"errors": [{"code": 1, "title": "\ud800t", "details": "d\udfff"}]},
            Rejected(400, 1, "\ufffdt", "d\ufffd"),
            id="lone-surrogates",
        ),
        pytest.param(
            400,
            {"errors": [{"code": 1, "title": _LONG, "details": _LONG}]},
            Rejected(400, 1, "y" * 200, "y" * 500),
            id="over-long",
        ),
        pytest.param(
            400,
            {"error": {"code": 1, "message": _LONG, "error_data": {"details": _LONG}}},
            Rejected(400, 1, "y" * 200, "y" * 500),
            id="cloud-over-long",
        ),
    ],
)
def test_answers_are_cleaned_for_storage(status: int, body: Any, expected: Rejected) -> None:
    assert parse_send_response(status, body) == expected


@pytest.mark.parametrize(
    "wamid",
    [
        pytest.param("wamid." + "A" * 5000, id="over-long"),
        pytest.param(f"wamid.{_NUL}x", id="nul"),
        pytest.param("wamid. x", id="space"),
        pytest.param("wamid.\u00e9", id="not-ascii"),
        pytest.param("\ud800", id="surrogate"),
    ],
)
def test_an_absurd_message_id_is_a_failed_answer_with_a_reason(wamid: str) -> None:
    outcome = parse_send_response(200, {"messages": [{"id": wamid}]})
    assert isinstance(outcome, Rejected)
    assert outcome.title == "response message id is not usable"
    assert outcome.detail is not None
    assert _NUL not in outcome.detail
    assert len(outcome.detail) <= 500


@pytest.mark.parametrize(
    "wamid",
    [
        "wamid.HBgLNDkxNTExMjM0NTY3FQIAERgSQjZCNEY4RjM1QzQ0QjcxRDI1AA==",
        "gBEGkYiEB1VXAglK1ZEqA1YKPrU",
    ],
)
def test_real_message_ids_are_usable(wamid: str) -> None:
    assert parse_send_response(200, {"messages": [{"id": wamid}]}) == Accepted(wamid, None)
