"""The claim statement: which queued rows of a channel may go now, and in which order.

Order per line (channel, recipient, ordering_key), pair pacing per recipient, the replay lane
and the shared bucket's tokens, in one statement that `MessageStore.claim` runs under the
channel's bucket lock (so claims on one channel take turns and see each other's `sending`).
"""

from __future__ import annotations

from sqlalchemy import TextualSelect, text
from sqlalchemy.dialects.postgresql import JSONB

from outbox.db.sql import OPEN_STATES

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
# entries of ix_messages_in_flight.
_CLAIMABLE = f"""
    SELECT m.id, m.priority, m.wa_id, m.replayed_at IS NOT NULL AS replayed
    FROM outbox.messages AS m
    WHERE m.state = 'queued' AND m.channel = :channel AND {{when}}
      AND (SELECT 1 FROM outbox.messages AS e
           WHERE e.channel = m.channel AND e.wa_id = m.wa_id AND e.ordering_key = m.ordering_key
             AND e.id < m.id AND e.state IN ({OPEN_STATES})
           LIMIT 1) IS NULL
      AND (SELECT 1 FROM outbox.messages AS e
           WHERE e.channel = m.channel AND e.wa_id = m.wa_id AND e.state = 'sending'
             {{in_flight}}
           LIMIT 1) IS NULL
      AND (SELECT 1 FROM outbox.recipient_pace AS p
           WHERE p.channel = m.channel AND p.wa_id = m.wa_id AND p.not_before > now()
           LIMIT 1) IS NULL
    ORDER BY {{order}}
    LIMIT :limit
    FOR UPDATE OF m SKIP LOCKED
"""

_READY = (
    "m.head AND m.next_attempt_at IS NULL AND m.send_after <= now() AND m.replayed_at IS {} NULL"
)
_BEST_FIRST = "m.priority DESC, m.id"
_LIVE = _CLAIMABLE.format(when=_READY.format(""), order=_BEST_FIRST, in_flight="{in_flight}")
_REPLAYED = _CLAIMABLE.format(when=_READY.format("NOT"), order=_BEST_FIRST, in_flight="{in_flight}")
_DUE = _CLAIMABLE.format(
    when="m.head AND m.next_attempt_at <= now()", order="m.next_attempt_at", in_flight="{in_flight}"
)
# Replayed rows (an operator's replay lane: those ready and those due for a retry) go first up
# to :replay_quota, then live rows and live due retries, then replayed rows again: each lane gets
# its share and takes what the other leaves, so a large replay never starves live traffic nor
# idles on a quiet channel, and replayed rows that back off do not join the live lane.
_CLAIM = f"""
    WITH live AS ({_LIVE}), due AS ({_DUE}), replayed AS ({_REPLAYED}),
    picked AS (
        SELECT id, wa_id FROM (
            SELECT id, wa_id, priority, lane,
                   {{nth}} AS nth
            FROM (
                SELECT id, wa_id, priority, 1 AS lane FROM live
                UNION ALL SELECT id, wa_id, priority, 1 FROM due WHERE NOT replayed
                UNION ALL SELECT id, wa_id, priority,
                    CASE WHEN row_number() OVER (ORDER BY priority DESC, id) <= :replay_quota
                         THEN 0 ELSE 2 END
                FROM (SELECT id, wa_id, priority FROM replayed
                      UNION ALL SELECT id, wa_id, priority FROM due WHERE replayed) AS r
            ) AS u
        ) AS ranked
        WHERE nth = 1
        ORDER BY lane, priority DESC, id
        LIMIT :limit
    ), claimed AS (
        UPDATE outbox.messages AS m
        SET state = 'sending', claimed_by = :worker, attempts = m.attempts + 1,
            lease_until = now() + make_interval(secs => :lease_seconds), updated_at = now()
        FROM picked LEFT JOIN outbox.contacts AS c
            ON c.channel = :channel AND c.wa_id = picked.wa_id
        WHERE m.id = picked.id
        RETURNING m.id, m.channel, m.recipient, m.payload, m.fallback_template, m.attempts,
                  m.created_at, m.expires_at, m.priority, m.sent_as, c.last_inbound_at,
                  m.error_code AS last_error
    ), spent AS (
        -- Tokens granted but not used (fewer rows were ready) go back into the bucket.
        UPDATE outbox.channel_state
        -- Casts: left to infer, the parameters would take count(*)'s bigint and lose the
        -- fraction of a token on every claim.
        SET tokens = least(
                CAST(:burst AS double precision),
                CAST(:tokens AS double precision) + :limit - (SELECT count(*) FROM claimed)),
            rate = CAST(:rate AS double precision), refilled_at = :refilled_at
        -- Nothing claimed: the bucket is as it was (a refill depends on time alone), and an
        -- idle channel's claims write nothing.
        WHERE channel = :channel AND EXISTS (SELECT 1 FROM claimed)
    )
    SELECT * FROM claimed
"""


def _claim(*, paced: bool) -> TextualSelect:
    sql = _CLAIM.format(
        # A newer row of the same line in flight; with pacing, any row to the recipient.
        in_flight="" if paced else "AND e.ordering_key = m.ordering_key AND e.id > m.id",
        # Pair pacing: one row per recipient in a claim, whatever its lines.
        nth="row_number() OVER (PARTITION BY wa_id ORDER BY lane, priority DESC, id)"
        if paced
        else "1",
    )
    return text(sql).columns(payload=JSONB, fallback_template=JSONB)


CLAIM_MESSAGES = _claim(paced=False)
CLAIM_PACED = _claim(paced=True)
