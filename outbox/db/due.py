"""Which channels have rows to claim now, and when the next retry or paced row comes due.

One statement per claim round, whatever the number of configured channels: a skip scan over the
live and replay indexes (one index probe per channel that has a ready head, up to :limit of
them, from the channel after :after on, wrapping around), the channels with retries due now
(`ix_messages_due_at`: only rows due, never those waiting for later), and the earliest future
retry or pace end over every channel (two index probes). Channels without due rows cost
nothing, so 10,000 idle channels cost what one does. Channels asked about by name (:also: a
client's numbers the cursor's list may leave out) are probed one by one.
"""

from __future__ import annotations

from sqlalchemy import text

_READY = "state = 'queued' AND next_attempt_at IS NULL AND head AND replayed_at IS {} NULL"
_DUE = "state = 'queued' AND next_attempt_at IS NOT NULL AND head"


def _skip_scan(name: str, ready: str, bound: str, limit: str) -> str:
    """Up to `limit` distinct channels with a ready head within `bound`, in channel order: one
    index probe each (a recursive CTE: PostgreSQL has no skip scan of its own here)."""
    first = (
        f"SELECT channel, 1 FROM outbox.messages WHERE {ready} AND {bound.format('channel')}"
        " ORDER BY channel LIMIT 1"
    )
    step = (
        f"SELECT m.channel FROM outbox.messages AS m WHERE {ready}"
        f" AND m.channel > s.channel AND {bound.format('m.channel')}"
        " ORDER BY m.channel LIMIT 1"
    )
    return f"""
    {name}(channel, n) AS (
        ({first})
        UNION ALL
        SELECT ({step}), s.n + 1 FROM {name} AS s WHERE s.channel IS NOT NULL AND s.n < {limit}
    )"""


_AFTER = "{} > :after"
_UP_TO = "{} <= :after"
# The channels up to the cursor come after those past it in the answer: once those past it
# fill :limit, the wrap-around's probes would all be cut (issue 16: with rows on 10,000
# channels, half of every look's probes).
_LEFT = """(:limit - (SELECT count(*) FROM (
    SELECT channel FROM live_after WHERE channel IS NOT NULL
    UNION SELECT channel FROM replay_after WHERE channel IS NOT NULL) AS past))"""
_SCANS = [
    ("live_after", _READY.format(""), _AFTER, ":limit"),
    ("replay_after", _READY.format("NOT"), _AFTER, ":limit"),
    ("live_up_to", _READY.format(""), _UP_TO, _LEFT),
    ("replay_up_to", _READY.format("NOT"), _UP_TO, _LEFT),
]

_FOUND = " UNION ".join(
    f"SELECT channel FROM {name} WHERE channel IS NOT NULL" for name, *_ in _SCANS
)


def _has_rows(channel: str) -> str:
    """The channel has a row to claim now: one probe of each index the skip scans use."""
    probes = [_READY.format(""), _READY.format("NOT"), f"{_DUE} AND next_attempt_at <= now()"]
    return " OR ".join(
        f"EXISTS (SELECT 1 FROM outbox.messages WHERE channel = {channel} AND {probe})"
        for probe in probes
    )


DUE_CHANNELS = text(
    f"""
    WITH RECURSIVE {", ".join(_skip_scan(*scan) for scan in _SCANS)},
    found AS (
        {_FOUND}
        UNION SELECT DISTINCT channel FROM outbox.messages
              WHERE {_DUE} AND next_attempt_at <= now()
    )
    SELECT
        ARRAY(SELECT channel FROM found ORDER BY channel <= :after, channel LIMIT :limit)
            AS channels,
        ARRAY(SELECT a.channel FROM unnest(CAST(:also AS text[])) AS a(channel)
              WHERE {_has_rows("a.channel")}) AS also_due,
        extract(epoch FROM least(
            (SELECT min(next_attempt_at) FROM outbox.messages
             WHERE {_DUE} AND next_attempt_at > now()),
            (SELECT min(not_before) FROM outbox.recipient_pace WHERE not_before > now())
        ) - now()) AS next_in
    """
)
