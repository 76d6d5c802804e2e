"""What the real API rejects in a send request, per dialect (waba-api.md §2, §7.3).

On-Premise answers Coreapp codes: 1008 missing, 1009 invalid value, 1010 parameter not allowed,
1001 text too long, 1002 bad recipient_type, 2014 template without namespace.
Cloud answers every one of these with Graph code 100. Meta uses 131008/131009 for some of them,
but a client classifies all of them alike (a permanent request error), so one code is enough.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from outbox.sandbox.responses import ApiError, Dialect
from outbox.sandbox.users import BSUID

MAX_TEXT = 4096
MAX_CALLBACK_DATA = 512

_MEDIA = frozenset({"image", "audio", "video", "document", "sticker"})
_COMMON_TYPES = _MEDIA | {"text", "location", "contacts", "interactive", "template"}
_TYPES: dict[Dialect, frozenset[str]] = {
    "onprem": _COMMON_TYPES | {"hsm"},
    "cloud": _COMMON_TYPES | {"reaction"},
}
# Top-level fields that belong to the other dialect.
_FOREIGN: dict[Dialect, tuple[str, ...]] = {
    "onprem": ("messaging_product", "biz_opaque_callback_data", "recipient"),
    "cloud": ("preview_url",),
}
_NO_CAPTION = frozenset({"audio", "sticker"})

Problem = Literal["missing", "invalid", "unexpected", "too_long", "recipient_type", "namespace"]

_ONPREM_CODES: dict[Problem, tuple[int, str]] = {
    "missing": (1008, "Required parameter is missing"),
    "invalid": (1009, "Parameter value is not valid"),
    "unexpected": (1010, "Parameter is not required"),
    "too_long": (1001, "Message too long"),
    "recipient_type": (1002, "Invalid recipient type"),
    "namespace": (2014, "Expected namespace is empty"),
}
_DETAILS: dict[Problem, str] = {
    "missing": "Parameter {} is required",
    "invalid": "Parameter {} has an invalid value",
    "unexpected": "Parameter {} is not allowed in this API",
    "too_long": f"Parameter {{}} must be at most {MAX_TEXT} characters long",
    "recipient_type": "Parameter {} must be 'individual'",
    "namespace": "Parameter {} is required",
}


class _Rejected(Exception):
    def __init__(self, problem: Problem, param: str) -> None:
        super().__init__(problem, param)
        self.problem = problem
        self.param = param


def validate(dialect: Dialect, body: Mapping[str, Any]) -> ApiError | None:
    """The error the real API would answer for this send request, or None if it is acceptable."""
    try:
        _check_message(dialect, body)
    except _Rejected as rejected:
        return _error(dialect, rejected.problem, rejected.param)
    return None


def invalid_body(dialect: Dialect) -> ApiError:
    """The error for a body that is not a JSON object."""
    return _error(dialect, "invalid", "body")


def _error(dialect: Dialect, problem: Problem, param: str) -> ApiError:
    details = _DETAILS[problem].format(param)
    if dialect == "onprem":
        code, title = _ONPREM_CODES[problem]
        return ApiError(code, title, details)
    title = f"The parameter {param} is required." if problem == "missing" else "Invalid parameter"
    return ApiError(100, title, details)


def _require(obj: Mapping[str, Any], key: str, prefix: str = "") -> Any:
    if key not in obj:
        raise _Rejected("missing", prefix + key)
    return obj[key]


def _object(value: Any, param: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _Rejected("invalid", param)
    return value


def _check_message(dialect: Dialect, body: Mapping[str, Any]) -> None:
    if dialect == "cloud" and body.get("messaging_product") != "whatsapp":
        # Meta says "is required" for a wrong value too.
        raise _Rejected("missing", "messaging_product")
    if dialect == "cloud" and "recipient" in body:
        # A username user's BSUID goes in `recipient`, never beside `to` (waba-2026.md §1.9).
        if "to" in body:
            raise _Rejected("unexpected", "to")
        if not isinstance(body["recipient"], str) or not BSUID.fullmatch(body["recipient"]):
            raise _Rejected("invalid", "recipient")
    else:
        to = _require(body, "to")
        # Cloud normalises phone formats itself; the Coreapp wants a bare WhatsApp id.
        if not isinstance(to, str) or not to or (dialect == "onprem" and not to.isdigit()):
            raise _Rejected("invalid", "to")
    for key in _FOREIGN[dialect]:
        if key in body:
            raise _Rejected("unexpected", key)
    if body.get("recipient_type", "individual") != "individual":
        raise _Rejected("recipient_type", "recipient_type")
    callback_data = body.get("biz_opaque_callback_data", "")
    if not isinstance(callback_data, str) or len(callback_data) > MAX_CALLBACK_DATA:
        raise _Rejected("invalid", "biz_opaque_callback_data")
    kind = body.get("type", "text")
    if not isinstance(kind, str) or kind not in _TYPES[dialect]:
        raise _Rejected("invalid", "type")
    content = _require(body, kind)
    if kind == "contacts":
        if not isinstance(content, list):
            raise _Rejected("invalid", kind)
        return
    _CHECKS[kind](dialect, kind, _object(content, kind))


def _check_text(dialect: Dialect, kind: str, text: Mapping[str, Any]) -> None:
    body = _require(text, "body", "text.")
    if not isinstance(body, str):
        raise _Rejected("invalid", "text.body")
    if len(body) > MAX_TEXT:
        raise _Rejected("too_long", "text.body")
    if dialect == "onprem" and "preview_url" in text:
        raise _Rejected("unexpected", "text.preview_url")


def _check_template(dialect: Dialect, kind: str, template: Mapping[str, Any]) -> None:
    if dialect == "onprem" and not template.get("namespace"):
        raise _Rejected("namespace", "template.namespace")
    if dialect == "cloud" and "namespace" in template:
        raise _Rejected("unexpected", "template.namespace")
    _require(template, "name", "template.")
    language = _object(_require(template, "language", "template."), "template.language")
    _require(language, "code", "template.language.")


def _check_media(dialect: Dialect, kind: str, media: Mapping[str, Any]) -> None:
    if ("id" in media) == ("link" in media):
        # Exactly one source: both at once is as wrong as none.
        raise _Rejected("missing", f"{kind}.id or {kind}.link")
    if kind in _NO_CAPTION and "caption" in media:
        raise _Rejected("unexpected", f"{kind}.caption")


def _check_interactive(dialect: Dialect, kind: str, interactive: Mapping[str, Any]) -> None:
    _require(interactive, "type", "interactive.")
    _require(interactive, "action", "interactive.")


def _check_nothing_more(dialect: Dialect, kind: str, content: Mapping[str, Any]) -> None:
    """Location, hsm and reaction are accepted as long as their object is there."""


_CHECKS: dict[str, Callable[[Dialect, str, Mapping[str, Any]], None]] = {
    "text": _check_text,
    "template": _check_template,
    "interactive": _check_interactive,
    **dict.fromkeys(_MEDIA, _check_media),
    **dict.fromkeys(("location", "hsm", "reaction"), _check_nothing_more),
}
