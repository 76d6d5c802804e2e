"""The statements that keep a live holder's leases: who still holds a row, and the renewal.

A holder cut off from the database for longer than its lease finds its rows rescued (`unknown`,
`lease_expired`) when it comes back; as long as nobody resent them, they are still its own: its
renewal takes them back to `sending` and its answer is written over the rescue. Only the rows
of a holder that is gone stay `unknown` for the unknown policy.
"""

from __future__ import annotations

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import BigInteger

from outbox.domain.codes import Code

# The rows a worker still holds: under its lease, or rescued from it (the lease ran out while
# the worker was cut off from the database) and not resent since (a resend clears
# `claimed_by`). Its answer and its renewal win over the rescue.
# Every statement using it names its rows by id. Written `state = 'sending' OR (state =
# 'unknown' AND ...)` it matched the predicates of the partial indexes of rows in flight and of
# `unknown` rows, and with statistics from a moment when few rows were in flight the planner
# read both instead of the rows by id: every row in flight, every replica's, for each batch of
# answers (and, in a form naming the ids twice, once per answer: 85 ms for 100). Issue 16,
# test_batch_plans. `state IN (...)` implies neither predicate.
HELD_BY_WORKER = f"""
    m.claimed_by = :worker AND m.state IN ('sending', 'unknown')
    AND (m.state = 'sending' OR m.error_code = '{Code.LEASE_EXPIRED.value}')
"""

# Extends the leases of the rows the worker still owes a result for and takes rescued ones back
# to `sending`, in one statement. Rows locked by another statement (a result being written, a
# rescue, an operator) are skipped rather than waited for: no lock order to get wrong, and the
# next renewal comes well within the lease.
RENEW_LEASES = text(
    f"""
    WITH held AS (
        SELECT m.id, m.state FROM outbox.messages AS m
        WHERE m.id = ANY(:ids) AND {HELD_BY_WORKER}
        ORDER BY m.id
        FOR UPDATE OF m SKIP LOCKED
    ), renewed AS (
        -- By id through the primary key, not joined to `held`: statistics that call the table
        -- empty (an ANALYZE during a bulk INSERT) made the join walk every row against them.
        -- SET reads the row as it was (locked above: as `held` saw it).
        UPDATE outbox.messages AS m
        SET state = 'sending', lease_until = now() + make_interval(secs => :lease_seconds),
            error_code = CASE WHEN m.state = 'unknown' THEN NULL ELSE m.error_code END,
            error_title = CASE WHEN m.state = 'unknown' THEN NULL ELSE m.error_title END,
            error_detail = CASE WHEN m.state = 'unknown' THEN NULL ELSE m.error_detail END,
            updated_at = CASE WHEN m.state = 'unknown' THEN now() ELSE m.updated_at END
        WHERE m.id = ANY(ARRAY(SELECT id FROM held))
        RETURNING m.id
    )
    SELECT r.id, h.state = 'unknown' AS taken_back FROM renewed AS r JOIN held AS h USING (id)
    """
).bindparams(bindparam("ids", type_=ARRAY(BigInteger())))
