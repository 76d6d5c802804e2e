"""Hypothesis strategies for API answers: HTTP answers as bytes on the wire, any of them hostile.

Valid 360dialog answers of both dialects (waba-api.md §2.9, §2.10) with hostile values (NUL,
lone surrogates, over-long or repeated message ids, codes of any size or type, nested garbage),
in any encoding and size, and answers that are not HTTP at all, lie about their length or stall.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from hypothesis import strategies as st

from tests import strategies as hs


@dataclass(frozen=True)
class Answer:
    """One HTTP answer as bytes on the wire; `framing` says how the body is delimited."""

    status_line: bytes
    headers: tuple[bytes, ...]
    body: bytes
    framing: str  # exact | absent (until close) | short | long | chunked | stall
    wamid: str | None = None  # set for a clean success: the client must read this id

    def wire(self) -> bytes:
        head = [self.status_line, b"Connection: close", *self.headers]
        body = self.body
        if self.framing == "exact":
            head.append(b"Content-Length: %d" % len(body))
        elif self.framing == "short":
            head.append(b"Content-Length: %d" % (len(body) // 2))
        elif self.framing in ("long", "stall"):  # stall: the rest never comes, nor the close
            head.append(b"Content-Length: %d" % (len(body) + 100))
        elif self.framing == "chunked":
            head.append(b"Transfer-Encoding: chunked")
            body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
        return b"\r\n".join(head) + b"\r\n\r\n" + body


TEXT = st.one_of(
    hs.ANY_TEXT,
    hs.ANY_TEXT.map(lambda s: f"{s}\x00{s}"),  # NUL inside, as a `\u0000` escape
    st.integers(201, 5000).map(lambda n: "t" * n),  # over the caps
    st.just(hs.Raw('"lone \\ud800 surrogate"')),
)
CODES = st.one_of(
    st.sampled_from([131026, 131047, 470, 130429, 131056, 1006, 190, 500, 232]),
    st.integers(),
    st.integers(-(2**63), 2**64 - 1),
    hs.ANY_TEXT,
    st.sampled_from(["131047", " 470 ", "0131026", "1e3", "-5", "１２３"]),
    st.none() | st.booleans() | st.floats(),
)
# A few ids shared by every answer, so that a batch repeats some: the unique index on `wamid`.
REPEATED = st.sampled_from(["wamid.HBgLNDkxNTExMjM0NTY3OBUCABEYEjQ", "gBEGkYiEB1VXAglK1ZEqA1YKPrU"])
WAMIDS = st.one_of(
    REPEATED,
    st.from_regex(r"wamid\.[A-Za-z0-9_=-]{10,60}", fullmatch=True),
    TEXT,
    st.integers(201, 100_000).map(lambda n: "w" * n),
    st.integers() | st.none(),
)
GARBAGE = hs.json_values(hs.ANY_TEXT, beyond_doubles=True) | hs.nested(st.integers(0, 3000))
META = st.fixed_dictionaries({"api_status": st.just("stable"), "version": TEXT}) | GARBAGE


def onprem_success() -> st.SearchStrategy[object]:
    messages = st.lists(st.fixed_dictionaries({"id": WAMIDS}), max_size=3) | GARBAGE
    contacts = st.lists(st.fixed_dictionaries({"input": TEXT, "wa_id": TEXT | GARBAGE}))
    return st.fixed_dictionaries(
        {"messages": messages}, optional={"meta": META, "contacts": contacts | GARBAGE}
    )


def cloud_success() -> st.SearchStrategy[object]:
    return st.fixed_dictionaries(
        {
            "messaging_product": st.just("whatsapp") | TEXT,
            "contacts": st.lists(st.fixed_dictionaries({"input": TEXT, "wa_id": TEXT})),
            "messages": st.lists(st.fixed_dictionaries({"id": WAMIDS}), min_size=1, max_size=3),
        }
    )


def onprem_error() -> st.SearchStrategy[object]:
    error = st.fixed_dictionaries(
        {"code": CODES, "title": TEXT | GARBAGE}, optional={"details": TEXT | GARBAGE}
    )
    return st.fixed_dictionaries(
        {"errors": st.lists(error | GARBAGE, min_size=1, max_size=3)}, optional={"meta": META}
    )


def cloud_error() -> st.SearchStrategy[object]:
    error = st.fixed_dictionaries(
        {"message": TEXT | GARBAGE, "code": CODES},
        optional={
            "type": TEXT,
            "error_data": st.fixed_dictionaries({"details": TEXT | GARBAGE}) | GARBAGE,
            "error_subcode": CODES,
            "fbtrace_id": TEXT,
        },
    )
    return st.fixed_dictionaries({"error": error | GARBAGE})


def gateway_error() -> st.SearchStrategy[object]:
    camel = st.fixed_dictionaries(
        {"success": st.just(False), "httpCode": CODES, "developerMessage": TEXT | GARBAGE}
    )
    snake = st.fixed_dictionaries(
        {"success": st.just(False), "http_code": CODES, "developer_message": TEXT | GARBAGE}
    )
    return st.fixed_dictionaries({"meta": camel | snake})


SHAPES = st.one_of(
    onprem_error(), cloud_error(), onprem_success(), cloud_success(), gateway_error(), GARBAGE
)
ENCODINGS = ["utf-8", "utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16", "utf-32", "latin-1"]


def _encode(value: object, encoding: str) -> bytes:
    return hs.json_text(value).encode(
        encoding, errors="surrogatepass" if "utf" in encoding else "replace"
    )


BODIES = st.one_of(
    st.builds(_encode, SHAPES, st.sampled_from(ENCODINGS)),
    st.binary(max_size=300),  # invalid UTF-8, NUL, a garbled proxy page
    # Big: a chunk repeated up to 3 MiB, or a valid error whose title is that long.
    st.builds(
        lambda chunk, n: chunk * (n // len(chunk)),
        st.binary(min_size=1, max_size=50),
        st.integers(0, 3 * 2**20),
    ),
    st.integers(0, 3 * 2**20).map(
        lambda n: orjson.dumps({"errors": [{"code": 131026, "title": "x\x00" * (n // 7)}]})
    ),
)
HEADER_TEXT = hs.ANY_TEXT.map(lambda s: s.encode("utf-8", "surrogatepass"))
CONTENT_TYPES = st.sampled_from(
    [b"application/json", b"application/json; charset=utf-16", b"text/html", b"text/plain;;"]
).map(lambda v: b"Content-Type: " + v) | HEADER_TEXT.map(lambda v: b"Content-Type: " + v)
RETRY_AFTER = st.one_of(
    st.sampled_from(["1", "30", "-5", "1e400", "nan", "inf", "3600000000", "1_0", " 2 ", "0x10"]),
    st.just("Wed, 21 Oct 2015 07:28:00 GMT"),
    hs.ANY_TEXT,
).map(lambda v: b"Retry-After: " + v.encode("utf-8", "surrogatepass"))
EXTRA = st.sampled_from([b"Content-Encoding: gzip", b"Content-Encoding: br", b"X-Empty:"])
STATUSES = st.sampled_from([200, 201, 400, 401, 403, 404, 429, 500, 502, 503])
STATUS_LINES = st.one_of(
    STATUSES.map(lambda s: b"HTTP/1.1 %d X" % s),
    st.tuples(st.integers(100, 999), st.binary(max_size=20).filter(lambda b: b"\n" not in b)).map(
        lambda s: b"HTTP/1.1 %d %s" % s
    ),
    st.binary(max_size=30),  # not HTTP at all
)
# Well-formed HTTP carrying a 360dialog shape with hostile values, as a proxy or the API sends.
SHAPED = st.builds(
    Answer,
    status_line=STATUSES.map(lambda s: b"HTTP/1.1 %d X" % s),
    headers=st.lists(CONTENT_TYPES | RETRY_AFTER, max_size=2).map(tuple),
    body=st.builds(_encode, SHAPES, st.sampled_from(ENCODINGS)),
    framing=st.sampled_from(["exact", "exact", "exact", "absent", "chunked"]),
)
# Anything on the wire: a status line that is not HTTP, headers that lie, a stall.
WIRE = st.builds(
    Answer,
    status_line=STATUS_LINES,
    headers=st.lists(CONTENT_TYPES | RETRY_AFTER | EXTRA, max_size=3).map(tuple),
    body=BODIES,
    framing=st.sampled_from(["exact", "absent", "short", "long", "chunked", "stall"]),
)


@st.composite
def clean_successes(draw: st.DrawFn) -> Answer:
    """A well-formed success: the client must read its id, and the row be `accepted` with it."""
    wamid = draw(st.from_regex(r"wamid\.[A-Za-z0-9_=-]{10,60}", fullmatch=True))
    # Beside the id, anything JSON allows: the id must not be lost for a value elsewhere.
    extra = draw(
        st.one_of(
            hs.json_values(hs.ANY_TEXT, beyond_doubles=True),
            hs.nested(st.integers(0, 300)),
            st.sampled_from(['"\\udc00"', '"\\ud800x"']).map(hs.Raw),  # lone surrogates
        )
    )
    body = {
        "messages": [{"id": wamid}],
        "contacts": [{"input": "+49", "wa_id": "49"}],
        "meta": extra,
    }
    status = draw(st.sampled_from([200, 201]))
    headers = (b"Content-Type: application/json",)
    # A JSON reader may take a byte order mark (RFC 8259 §8.1), and one says the encoding.
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32"]))
    encoded = hs.json_text(body).encode(encoding, "surrogatepass")
    return Answer(b"HTTP/1.1 %d OK" % status, headers, encoded, "exact", wamid)


ANSWERS = st.lists(st.one_of(SHAPED, SHAPED, WIRE, clean_successes()), min_size=2, max_size=8)
