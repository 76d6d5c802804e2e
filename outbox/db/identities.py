"""Phone-BSUID pairs (`outbox.identity_pairs`) and the window lookup that follows them.

A user's inbound messages may name them by phone number, by BSUID, or both; a row may be
written to either. The pairs learned from webhooks and send answers join the two, so the
window one spelling opened applies to rows written to the other (see migration 0015).
"""

from __future__ import annotations

from sqlalchemy.types import Text

from outbox.db.arrays import ArrayColumns
from outbox.domain.identity import SQL_BSUID_PREFIX


def last_inbound(channel: str, key: str) -> str:
    """SQL: the latest inbound message of the user whose recipient key is `key` on `channel`,
    under any spelling a pair joins to it (both given as SQL expressions)."""
    # Three key probes, not one `IN (… UNION …)`: the planner may turn that into a walk of
    # every contact of the channel per claimed row.
    paired = """(SELECT max(k.last_inbound_at) FROM outbox.identity_pairs AS p
            JOIN outbox.contacts AS k ON k.channel = p.channel AND k.wa_id = p.{to}
            WHERE p.channel = {channel} AND p.{by} = {key})"""
    return f"""greatest(
        (SELECT k.last_inbound_at FROM outbox.contacts AS k
         WHERE k.channel = {channel} AND k.wa_id = {key}),
        {paired.format(to="wa_id", by="bsuid", channel=channel, key=key)},
        {paired.format(to="bsuid", by="wa_id", channel=channel, key=key)})"""


# Into `outbox.identity_pairs AS p`: the latest word on a BSUID wins.
UPSERT_PAIR = """ON CONFLICT (channel, bsuid) DO UPDATE
    SET wa_id = excluded.wa_id, source = excluded.source, learned_at = now()
    WHERE p.wa_id IS DISTINCT FROM excluded.wa_id"""

PAIR_COLUMNS = ArrayColumns(
    (("channel", Text()), ("wa_id", Text()), ("bsuid", Text()), ("source", Text()))
)
# The latest word on a BSUID wins; one row per BSUID (a statement may not touch a row twice),
# in key order so that concurrent batches lock pairs in one order.
LEARN_PAIRS = PAIR_COLUMNS.statement(
    f"""
    INSERT INTO outbox.identity_pairs AS p (channel, bsuid, wa_id, source)
    SELECT DISTINCT ON (channel, bsuid) channel, bsuid, wa_id, source
    FROM {PAIR_COLUMNS.unnest("n", ordinality="n_order")}
    ORDER BY channel, bsuid, n_order DESC
    {UPSERT_PAIR}
    """
)

MOVE_COLUMNS = ArrayColumns((("channel", Text()), ("old_bsuid", Text()), ("new_bsuid", Text())))
# A user's new BSUID keeps the phone number their old one was paired with.
INHERIT_PAIRS = MOVE_COLUMNS.statement(
    f"""
    INSERT INTO outbox.identity_pairs AS p (channel, bsuid, wa_id, source)
    SELECT DISTINCT ON (o.channel, n.new_bsuid) o.channel, n.new_bsuid, o.wa_id, 'user_id_changed'
    FROM {MOVE_COLUMNS.unnest("n")}
    JOIN outbox.identity_pairs AS o ON o.channel = n.channel AND o.bsuid = n.old_bsuid
    ORDER BY o.channel, n.new_bsuid
    ON CONFLICT (channel, bsuid) DO NOTHING
    """
)

ADDRESSED_COLUMNS = ArrayColumns((("channel", Text()), ("wamid", Text()), ("bsuid", Text())))
# A status to a BSUID found its row by message id: a row written to a phone number pairs it.
# Rows written to a BSUID (or not known yet: the status is parked) teach nothing.
PAIR_BY_MESSAGE = ADDRESSED_COLUMNS.statement(
    f"""
    INSERT INTO outbox.identity_pairs AS p (channel, bsuid, wa_id, source)
    SELECT DISTINCT ON (m.channel, a.bsuid) m.channel, a.bsuid, m.wa_id, 'status'
    FROM {ADDRESSED_COLUMNS.unnest("a")}
    JOIN outbox.messages AS m ON m.wamid = a.wamid AND m.channel = a.channel
    WHERE m.wa_id !~ '{SQL_BSUID_PREFIX}'
    ORDER BY m.channel, a.bsuid, m.id DESC
    {UPSERT_PAIR}
    """
)
