"""The result statement: what the sender writes back for its claimed rows, in one statement per
batch (and, for rows held inside a claim, in the claim's own transaction)."""

from __future__ import annotations

from sqlalchemy import text

from outbox.db.arrays import JsonRows
from outbox.db.identities import UPSERT_PAIR
from outbox.db.leases import HELD_BY_WORKER
from outbox.domain.identity import SQL_BSUID_PREFIX
from outbox.domain.models import SendResult

SEND_RESULT_COLUMNS = JsonRows(
    (
        ("id", "bigint"),
        ("state", "text"),
        ("at", "timestamptz"),
        ("wamid", "text"),
        ("sent_as", "text"),
        ("error_code", "text"),
        ("error_title", "text"),
        ("error_detail", "text"),
        ("next_attempt_at", "timestamptz"),
        ("attempts_delta", "integer"),
        ("pace_until", "timestamptz"),
        ("held_template", "bigint"),
        ("message_status", "text"),
        ("opt_out", "boolean"),
        ("pace_strike", "boolean"),
        ("answer_wa_id", "text"),
        ("answer_bsuid", "text"),
    )
)

# One statement per batch: write the outcomes; a row sent to a paced recipient records when the
# next one may go. The rows are locked in id order first, as the reconciler locks them: in the
# order the answers came, two such statements could deadlock. A row that backs off lends its
# retry time to nobody: the rows behind it are not heads, so no claim looks at them, and when
# it ends, however it ends, the next row goes on its own schedule (the hand-over trigger).
# Issue 18: a 131056 grows the pair's pause (strikes), an acceptance resets it; a 131050
# records the user's marketing opt-out, keyed on the recipient as written when it is a BSUID;
# a send answer naming the user's BSUID pairs it with their number (`paired`).
COMPLETE_SENDS = text(
    f"""
    WITH r AS MATERIALIZED (SELECT * FROM {SEND_RESULT_COLUMNS.recordset("r")}),
    locked AS MATERIALIZED (
        SELECT m.id FROM outbox.messages AS m
        -- The ids themselves, not `IN (SELECT id FROM r)`: with statistics that call the table
        -- empty the semi-join read every row of it (test_batch_plans).
        WHERE m.id = ANY(ARRAY(SELECT id FROM r)) AND {HELD_BY_WORKER}
        ORDER BY m.id
        FOR UPDATE OF m
    ), done AS (
        UPDATE outbox.messages AS m SET
            state = r.state,
            attempts = greatest(m.attempts + r.attempts_delta, 0),  -- CHECK since 0020
            -- m.wamid is this send's or NULL: the claim moved an earlier one to message_sends.
            wamid = coalesce(r.wamid, m.wamid),
            sent_as = coalesce(r.sent_as, m.sent_as),
            error_code = r.error_code,
            error_title = r.error_title,
            error_detail = r.error_detail,
            next_attempt_at = r.next_attempt_at,
            held_template = r.held_template,
            message_status = coalesce(r.message_status, m.message_status),
            accepted_at = CASE WHEN r.state = 'accepted' THEN r.at ELSE m.accepted_at END,
            failed_at = CASE WHEN r.state = 'failed' THEN r.at ELSE m.failed_at END,
            claimed_by = NULL, lease_until = NULL, updated_at = now()
        -- The locked rows by id; `locked` checked they are held, and they stay so (locked).
        FROM r WHERE m.id = ANY(ARRAY(SELECT id FROM locked)) AND m.id = r.id
        RETURNING m.id, m.channel, m.wa_id, m.recipient, m.wamid, r.at, r.state, r.pace_until,
                  r.opt_out, r.pace_strike, r.error_code, r.error_title,
                  r.answer_wa_id, r.answer_bsuid
    ), paired AS (
        -- A send answer that names the user's BSUID pairs it with their number (issue 18).
        INSERT INTO outbox.identity_pairs AS p (channel, bsuid, wa_id, source)
        SELECT DISTINCT ON (channel, answer_bsuid) channel, answer_bsuid,
               coalesce(answer_wa_id, CASE WHEN wa_id !~ '{SQL_BSUID_PREFIX}' THEN wa_id END),
               'send_answer'
        FROM done
        WHERE answer_bsuid IS NOT NULL
          AND coalesce(answer_wa_id, CASE WHEN wa_id !~ '{SQL_BSUID_PREFIX}' THEN wa_id END)
              IS NOT NULL
        ORDER BY channel, answer_bsuid
        {UPSERT_PAIR}
    ), pair AS (
        SELECT channel, wa_id, max(pace_until) AS pace_until, bool_or(pace_strike) AS strike,
               bool_or(state = 'accepted') AS accepted
        FROM done GROUP BY channel, wa_id
    ), paced AS (
        INSERT INTO outbox.recipient_pace AS p (channel, wa_id, not_before, strikes)
        SELECT channel, wa_id,
               CASE WHEN strike THEN greatest(pace_until, now() + make_interval(
                   secs => CAST(:pair_base AS double precision)))
                    ELSE pace_until END,
               CASE WHEN strike THEN 1 ELSE 0 END
        FROM pair
        WHERE pace_until IS NOT NULL OR strike
        ON CONFLICT (channel, wa_id) DO UPDATE SET
            strikes = CASE WHEN excluded.strikes > 0 THEN least(p.strikes + 1, 1000) ELSE 0 END,
            not_before = CASE
                WHEN excluded.strikes > 0 THEN greatest(p.not_before, now() + make_interval(
                    secs => least(CAST(:pair_cap AS double precision),
                                  :pair_base * power(CAST(:pair_factor AS double precision),
                                                     least(p.strikes, 32)))))
                ELSE greatest(p.not_before, excluded.not_before) END
    ), reset AS (
        -- An acceptance with no pacing of its own only ends the pair's strikes (a pair the
        -- insert above touched is not touched here: one statement changes a row once).
        UPDATE outbox.recipient_pace AS p SET strikes = 0
        FROM pair
        WHERE pair.accepted AND pair.pace_until IS NULL AND NOT pair.strike
          AND p.channel = pair.channel AND p.wa_id = pair.wa_id AND p.strikes > 0
    ), opted AS (
        INSERT INTO outbox.marketing_preferences AS o
            (channel, identity, category, opted_out, at, source, evidence)
        SELECT DISTINCT ON (channel, identity) channel, identity, :opt_out_category, true, at,
               '131050', jsonb_build_object('message_id', id, 'wamid', wamid,
                                            'error_code', error_code,
                                            'error_title', left(error_title, 200))
        FROM (SELECT *, CASE WHEN recipient ~ '{SQL_BSUID_PREFIX}' THEN recipient ELSE wa_id END
                        AS identity
              FROM done WHERE opt_out) AS o
        ORDER BY channel, identity, at DESC
        ON CONFLICT (channel, identity, category) DO UPDATE SET
            opted_out = true, at = excluded.at, source = excluded.source,
            evidence = excluded.evidence, recorded_at = now()
        WHERE excluded.at >= o.at
    )
    SELECT count(*) FROM done
    """
)


def result_row(r: SendResult) -> tuple[object, ...]:
    return (
        r.message_id,
        r.state.value,
        r.at,
        r.wamid,
        r.sent_as.value if r.sent_as else None,
        r.error_code,
        r.error_title,
        r.error_detail,
        r.next_attempt_at,
        r.attempts_delta,
        r.pace_until,
        r.held_template,
        r.message_status,
        r.opt_out,
        r.pace_strike,
        r.answer_wa_id,
        r.answer_bsuid,
    )
