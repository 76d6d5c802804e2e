"""Replicas and the channels they know: the heartbeat (`outbox.replicas`) and failing the
rows of a channel no live replica knows nor the registry holds (during a rollout old and new
replicas overlap; a row is failed only when none of them serves its channel).
"""

from __future__ import annotations

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import Text

from outbox.db.sql import OPEN_STATES

# Distinct channels of open rows by skipping through an index, not by reading every row.
FIND_OPEN_CHANNELS = text(
    f"""
    WITH RECURSIVE ch(channel) AS (
        (SELECT channel FROM outbox.messages
         WHERE state IN ({OPEN_STATES}) ORDER BY channel LIMIT 1)
        UNION ALL
        SELECT (SELECT m.channel FROM outbox.messages AS m
                WHERE m.state IN ({OPEN_STATES}) AND m.channel > ch.channel
                ORDER BY m.channel LIMIT 1)
        FROM ch WHERE ch.channel IS NOT NULL
    )
    SELECT channel FROM ch WHERE channel IS NOT NULL
    """
)

FAIL_UNKNOWN_CHANNEL = text(
    """
    WITH bad AS (
        SELECT id FROM outbox.messages
        WHERE channel = :channel AND state = 'queued'
          AND created_at < now() - make_interval(secs => :grace_seconds)
          -- In the same statement: a channel added to the registry meanwhile is seen. File
          -- channels' mirrors do not count: live replicas' heartbeats speak for those.
          AND NOT EXISTS (SELECT 1 FROM outbox.channels AS r
                          WHERE r.id = :channel AND r.source = 'registry')
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE outbox.messages AS m
    SET state = 'failed', error_code = :code,
        error_title = :title,
        error_detail = :detail, failed_at = now(), next_attempt_at = NULL, updated_at = now()
    FROM bad WHERE m.id = bad.id
    RETURNING m.id, m.channel, m.state
    """
)

# This replica's heartbeat. Its channels go over only when they changed (:channels NULL: keep
# those recorded), so a tick with 10,000 channels sends what one with 1 does; `written` is
# false when the row was gone (forgotten after a day of silence) and the set must be sent again.
# Replicas silent for a day are forgotten.
HEARTBEAT = text(
    """
    WITH me AS (
        INSERT INTO outbox.replicas AS r (worker_id, channels, seen_at)
        VALUES (:worker, coalesce(:channels, '{}'), now())
        ON CONFLICT (worker_id)
            DO UPDATE SET channels = coalesce(:channels, r.channels), seen_at = excluded.seen_at
        RETURNING :channels IS NOT NULL OR xmax <> 0 AS written
    ), gone AS (
        DELETE FROM outbox.replicas WHERE seen_at < now() - interval '1 day'
    )
    SELECT written FROM me
    """
).bindparams(bindparam("channels", type_=ARRAY(Text())))

# Which of some channels (those with open rows this replica does not know) a live replica
# knows: asked only when there are such channels, naming only them.
KNOWN_ELSEWHERE = text(
    """
    SELECT DISTINCT c.channel FROM outbox.replicas AS r, unnest(r.channels) AS c(channel)
    WHERE r.seen_at > now() - make_interval(secs => :live_seconds)
      AND c.channel = ANY(:channels)
    """
).bindparams(bindparam("channels", type_=ARRAY(Text())))
