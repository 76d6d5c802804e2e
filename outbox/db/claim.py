"""The claim statement: which queued rows of some channels may go now, and in which order.

Order per line (channel, recipient, ordering_key), pair pacing per recipient, the replay lane
and the shared bucket's tokens, in one statement over any number of channels (a LATERAL per
channel) that `MessageStore.claim_many` runs under the channels' bucket locks (so claims on a
channel take turns and see each other's `sending`). Which channels to ask is `DUE_CHANNELS`.
"""

from __future__ import annotations

from sqlalchemy import TextualSelect
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import DateTime, Float, Integer, Text

from outbox.db.arrays import ArrayColumns
from outbox.db.identities import last_inbound
from outbox.db.sql import OPEN_STATES

# What each asked channel was granted, and its bucket after the grant (written back, less what
# went unused, when the channel claimed anything).
GRANTS = ArrayColumns(
    (
        ("channel", Text()),
        ("granted", Integer()),
        ("replay_quota", Integer()),
        ("burst", Float()),
        ("tokens", Float()),
        ("rate", Float()),
        ("refilled_at", DateTime(timezone=True)),
    )
)

# A row is claimable only if no older row of its line (channel, recipient, ordering_key) is
# still open (queued, sending or unknown): one message per line at a time, in insertion order,
# and a head that ends (sent, failed, expired, cancelled) releases the next. Nor while a newer
# row of its line is in flight: an older row opened again (a replay, a late window refusal)
# waits for it rather than overtake it on the wire. With pair pacing (CLAIM_PACED) a recipient
# gets one row at a time whatever the lines: none while any of its rows is in flight, one per
# claim. Two statements rather than a parameter: a prepared statement's generic plan would
# otherwise carry the pacing's window and wider probe into every claim.
# Ready rows and due retries come from two indexes, so rows waiting for later are never walked
# past; both hold only heads (`head`, kept by triggers), so a backlog to one recipient is not
# walked either. The probe stays: `head` may be stale the other way (an older row opened again).
# The checks are scalar subqueries with LIMIT 1, not NOT EXISTS: the planner cannot turn them
# into an anti-join, which it would plan as a scan of every open row of the channel per
# candidate whenever the statistics predate a burst (about 1,000,000 rows read per claim of
# 100 from a fresh 20,000-row backlog). Each is one probe of ix_messages_line, or of the few
# entries of ix_messages_in_flight. Each reads `coalesce((SELECT false ...), true)`, not
# `(SELECT 1 ...) IS NULL`: the planner prices an IS NULL of a subquery as passing one row in
# 200, so three of them made it expect to read a channel's every row to fill a claim, and it
# did (a bitmap scan, every row probed, then sorted: issue 16, `test_claim_scale`); priced at
# one in two, the first rows of ix_messages_live in order win.
_CLAIMABLE = f"""
    SELECT m.id, m.priority, m.wa_id, m.replayed_at IS NOT NULL AS replayed
    FROM outbox.messages AS m
    WHERE m.state = 'queued' AND m.channel = g.channel AND {{when}}
      AND coalesce((SELECT false FROM outbox.messages AS e
           WHERE e.channel = m.channel AND e.wa_id = m.wa_id AND e.ordering_key = m.ordering_key
             AND e.id < m.id AND e.state IN ({OPEN_STATES})
           LIMIT 1), true)
      AND coalesce((SELECT false FROM outbox.messages AS e
           WHERE e.channel = m.channel AND e.wa_id = m.wa_id AND e.state = 'sending'
             {{in_flight}}
           LIMIT 1), true)
      AND coalesce((SELECT false FROM outbox.recipient_pace AS p
           WHERE p.channel = m.channel AND p.wa_id = m.wa_id AND p.not_before > now()
           LIMIT 1), true)
    ORDER BY {{order}}
    LIMIT g.granted {{extra}}
    FOR UPDATE OF m SKIP LOCKED
"""

_READY = (
    "m.head AND m.next_attempt_at IS NULL AND m.send_after <= now() AND m.replayed_at IS {} NULL"
)
_BEST_FIRST = "m.priority DESC, m.id"
# The live lane reads one row past the grant: it is never picked (the lane's own order is the
# pick's, so `granted` rows rank before it), and tells that the channel has more rows ready than
# it was granted (`more`), which lets the next round claim again without asking which channels
# are due, and only then (issue 16: with 2 rows a channel over 10,000 channels, a third of the
# rounds revisited channels their last claim had emptied). Locking it for the claim's few
# milliseconds delays no other claim: claims on a channel take turns on its bucket row.
_LIVE = _CLAIMABLE.format(
    when=_READY.format(""), order=_BEST_FIRST, in_flight="{in_flight}", extra="+ 1"
)
_REPLAYED = _CLAIMABLE.format(
    when=_READY.format("NOT"), order=_BEST_FIRST, in_flight="{in_flight}", extra=""
)
_DUE = _CLAIMABLE.format(
    when="m.head AND m.next_attempt_at <= now()",
    order="m.next_attempt_at",
    in_flight="{in_flight}",
    extra="",
)


def _per_channel(claimable: str) -> str:
    """The claimable rows of every asked channel, each channel's own LIMIT and index scan."""
    return (
        "SELECT g.channel, g.granted, g.replay_quota, x.* "
        f"FROM g CROSS JOIN LATERAL ({claimable}) AS x"
    )


# Replayed rows (an operator's replay lane: those ready and those due for a retry) go first up
# to the channel's :replay_quota, then live rows and live due retries, then replayed rows again:
# each lane gets its share and takes what the other leaves, so a large replay never starves live
# traffic nor idles on a quiet channel, and replayed rows that back off do not join the live lane.
# Each channel gets at most the tokens it was granted (`granted`).
_CLAIM = f"""
    WITH g AS MATERIALIZED (SELECT * FROM {GRANTS.unnest("g")}),
    live AS ({_per_channel(_LIVE)}),
    due AS ({_per_channel(_DUE)}),
    replayed AS ({_per_channel(_REPLAYED)}),
    placed AS (
            SELECT id, wa_id, channel, granted,
                   row_number() OVER (PARTITION BY channel ORDER BY lane, priority DESC, id) AS pos
            FROM (
                SELECT id, wa_id, channel, granted, priority, lane, {{nth}} AS nth
                FROM (
                    SELECT id, wa_id, channel, granted, priority, 1 AS lane FROM live
                    UNION ALL SELECT id, wa_id, channel, granted, priority, 1
                        FROM due WHERE NOT replayed
                    UNION ALL SELECT id, wa_id, channel, granted, priority,
                        CASE WHEN row_number() OVER (
                                      PARTITION BY channel ORDER BY priority DESC, id
                                  ) <= replay_quota
                             THEN 0 ELSE 2 END
                    FROM (SELECT id, wa_id, channel, granted, priority, replay_quota FROM replayed
                          UNION ALL SELECT id, wa_id, channel, granted, priority, replay_quota
                          FROM due WHERE replayed) AS r
                ) AS u
            ) AS ranked
            WHERE nth = 1
    ),
    picked AS (SELECT id, wa_id, channel FROM placed WHERE pos <= granted)
    , claimed AS (
        UPDATE outbox.messages AS m
        SET state = 'sending', claimed_by = :worker, attempts = m.attempts + 1,
            lease_until = now() + make_interval(secs => :lease_seconds), updated_at = now()
        -- By id, not joined to `picked`: with statistics that call the table empty (an
        -- ANALYZE while a bulk INSERT was still uncommitted) a join walked every row of the
        -- table against the picked ones (3 s a claim at 20,000 rows; test_claim_scale).
        WHERE m.id = ANY(ARRAY(SELECT id FROM picked))
        RETURNING m.id, m.channel, m.recipient, m.payload, m.fallback_template, m.attempts,
                  m.created_at, m.expires_at, m.priority, m.sent_as,
                  {last_inbound("m.channel", "m.wa_id")} AS last_inbound_at,
                  m.error_code AS last_error
    ), spent AS (
        -- Tokens granted but not used (fewer rows were ready) go back into the bucket.
        UPDATE outbox.channel_state AS s
        SET tokens = least(g.burst, g.tokens + g.granted - n.claimed),
            rate = g.rate, refilled_at = g.refilled_at
        FROM g JOIN (SELECT channel, count(*) AS claimed FROM claimed GROUP BY channel) AS n
            ON n.channel = g.channel
        -- Nothing claimed: the bucket is as it was (a refill depends on time alone), and an
        -- idle channel's claims write nothing.
        WHERE s.channel = g.channel
    )
    -- The channels with more rows ready than granted, as one array (an InitPlan, run once):
    -- a test per row against the rows placed would cost rows x rows at one channel.
    SELECT c.*, c.channel = ANY(ARRAY(
        SELECT channel FROM placed GROUP BY channel HAVING count(*) > min(granted)
    )) AS more
    FROM claimed AS c
"""


def _claim(*, paced: bool) -> TextualSelect:
    sql = _CLAIM.format(
        # A newer row of the same line in flight; with pacing, any row to the recipient.
        in_flight="" if paced else "AND e.ordering_key = m.ordering_key AND e.id > m.id",
        # Pair pacing: one row per recipient in a claim, whatever its lines.
        nth="row_number() OVER (PARTITION BY channel, wa_id ORDER BY lane, priority DESC, id)"
        if paced
        else "1",
    )
    return GRANTS.statement(sql).columns(payload=JSONB, fallback_template=JSONB)


CLAIM_MESSAGES = _claim(paced=False)
CLAIM_PACED = _claim(paced=True)
