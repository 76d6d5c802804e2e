"""Row integrity (issue 19 §1, §4): what a producer's INSERT may set, impossible values, the `00`
prefix, idempotency keys that outlive `purge`.

- `id` becomes GENERATED ALWAYS (a catalogue change, no rewrite): an explicit id is refused
  instead of taking a value ahead of the sequence and breaking other producers' inserts. The
  sequence is first moved past max(id), which such inserts may have left behind it.
- An insert trigger refuses a new row that sets a daemon-owned column (`state` other than
  `queued`, `attempts`, a lease, a wamid, an outcome, daemon timestamps ...), naming the columns
  (SQLSTATE 23514); `created_at`/`updated_at` are set to now() whatever is written. A session
  of the table's owner that sets `outbox.trusted_insert = 'on'` may write any row (fixtures).
- CHECKs: finite `send_after`/`expires_at` ('infinity' crashed the send task), `attempts` in
  0..1000, `priority` in -1000..1000. Rows already violating them are settled first: open ones
  fail `invalid_row` with the columns named, and the values are brought into range (times made
  finite, counters clamped); a `sending` row with no lease (never rescued) fails the same way.
  Then the CHECKs are added NOT VALID and validated (a scan, no rewrite). The migration holds
  the table's ACCESS EXCLUSIVE lock (its ALTERs) while it reads the table: producers' INSERTs
  wait that long (0.6 s for 200,001 rows at load 12).
- A recipient's key drops a leading `00` (the international prefix) as Python does: in
  `outbox.recipient_key` and the two insert triggers that spell it out. Rows already written
  keep their key.
- `outbox.idempotency_keys`: `purge` keeps there the keys of the messages it deletes; an INSERT
  that reuses one is skipped (a no-op, as ON CONFLICT DO NOTHING), until `purge --keep-keys`.

The release before still runs on it: it inserts no messages, its purge only leaves keys
unrecorded, and it sends a `00…` recipient as written (its wa_id differs from new rows').

Revision ID: 0020
Revises: 0018
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

from outbox.db.migrate import declare_compatibility, forget_compatibility

revision = "0020"
down_revision = "0018"
branch_labels = None
depends_on = None
# Additive for the release before: see the docstring.
compatible_with = "0018"

_OPEN = "state IN ('queued', 'sending', 'unknown')"
_FINITE = "isfinite(send_after) AND (expires_at IS NULL OR isfinite(expires_at))"
_COUNTERS = "attempts BETWEEN 0 AND 1000 AND priority BETWEEN -1000 AND 1000"
# Each impossible value of a row already in the table, as the column it names.
_PROBLEMS = (
    ("send_after", "NOT isfinite(send_after)"),
    ("expires_at", "expires_at IS NOT NULL AND NOT isfinite(expires_at)"),
    ("attempts", "attempts NOT BETWEEN 0 AND 1000"),
    ("priority", "priority NOT BETWEEN -1000 AND 1000"),
    ("lease_until", "state = 'sending' AND lease_until IS NULL"),
)
_NAMED = ", ".join(f"CASE WHEN {test} THEN '{column}' END" for column, test in _PROBLEMS)
_SETTLE_IMPOSSIBLE = f"""
UPDATE outbox.messages AS m SET
    state = CASE WHEN m.{_OPEN} THEN 'failed' ELSE m.state END,
    error_code = CASE WHEN m.{_OPEN} THEN 'invalid_row' ELSE m.error_code END,
    error_title = CASE WHEN m.{_OPEN} THEN 'the row holds values no send can have'
                       ELSE m.error_title END,
    error_detail = CASE WHEN m.{_OPEN} THEN 'impossible ' || array_to_string(
        array_remove(ARRAY[{_NAMED}], NULL), ', ') || ' (found by migration 0020)'
        ELSE m.error_detail END,
    failed_at = CASE WHEN m.{_OPEN} THEN now() ELSE m.failed_at END,
    next_attempt_at = CASE WHEN m.{_OPEN} THEN NULL ELSE m.next_attempt_at END,
    lease_until = CASE WHEN m.{_OPEN} THEN NULL ELSE m.lease_until END,
    send_after = CASE WHEN isfinite(m.send_after) THEN m.send_after ELSE m.created_at END,
    expires_at = CASE WHEN m.expires_at IS NULL OR isfinite(m.expires_at) THEN m.expires_at
                      WHEN m.expires_at < now() THEN m.created_at END,
    attempts = least(greatest(m.attempts, 0), 1000),
    priority = least(greatest(m.priority, -1000), 1000),
    updated_at = now()
WHERE NOT ({_FINITE}) OR NOT ({_COUNTERS}) OR (state = 'sending' AND lease_until IS NULL)
"""

# Every column a producer may not set, with how its value is told apart from its default.
_DAEMON_COLUMNS = (
    ("state", "NEW.state IS DISTINCT FROM 'queued'"),
    ("attempts", "NEW.attempts <> 0"),
    ("next_attempt_at", "NEW.next_attempt_at IS NOT NULL"),
    ("claimed_by", "NEW.claimed_by IS NOT NULL"),
    ("lease_until", "NEW.lease_until IS NOT NULL"),
    ("wamid", "NEW.wamid IS NOT NULL"),
    ("sent_as", "NEW.sent_as IS NOT NULL"),
    ("error_code", "NEW.error_code IS NOT NULL"),
    ("error_title", "NEW.error_title IS NOT NULL"),
    ("error_detail", "NEW.error_detail IS NOT NULL"),
    ("accepted_at", "NEW.accepted_at IS NOT NULL"),
    ("sent_at", "NEW.sent_at IS NOT NULL"),
    ("delivered_at", "NEW.delivered_at IS NOT NULL"),
    ("read_at", "NEW.read_at IS NOT NULL"),
    ("failed_at", "NEW.failed_at IS NOT NULL"),
    ("replayed_at", "NEW.replayed_at IS NOT NULL"),
    ("replays", "NEW.replays <> 0"),
    ("unknown_resends", "NEW.unknown_resends <> 0"),
    ("message_status", "NEW.message_status IS NOT NULL"),
    ("pricing_category", "NEW.pricing_category IS NOT NULL"),
    ("pricing_type", "NEW.pricing_type IS NOT NULL"),
    ("held_template", "NEW.held_template IS NOT NULL"),
)
_ANY_SET = " OR ".join(test for _, test in _DAEMON_COLUMNS)
_WHICH_SET = ", ".join(f"CASE WHEN {test} THEN '{c}' END" for c, test in _DAEMON_COLUMNS)

_UP = [
    # Past every id an explicit insert may have taken, then nobody may choose one again.
    """
SELECT setval('outbox.messages_id_seq', m.id) FROM (SELECT max(id) AS id FROM outbox.messages) AS m
WHERE m.id > coalesce((SELECT last_value FROM pg_sequences
                       WHERE schemaname = 'outbox' AND sequencename = 'messages_id_seq'), 0)
    """,
    "ALTER TABLE outbox.messages ALTER COLUMN id SET GENERATED ALWAYS",
    _SETTLE_IMPOSSIBLE,
    f"ALTER TABLE outbox.messages ADD CONSTRAINT ck_messages_finite_times CHECK ({_FINITE})"
    " NOT VALID",
    f"ALTER TABLE outbox.messages ADD CONSTRAINT ck_messages_counters CHECK ({_COUNTERS})"
    " NOT VALID",
    "ALTER TABLE outbox.messages VALIDATE CONSTRAINT ck_messages_finite_times",
    "ALTER TABLE outbox.messages VALIDATE CONSTRAINT ck_messages_counters",
    f"""
CREATE FUNCTION outbox.refuse_daemon_columns() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    named text[];
BEGIN
    -- Fixtures and repairs: only the table's owner may, and only when it says so.
    IF current_setting('outbox.trusted_insert', true) = 'on'
       AND pg_has_role((SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'MEMBER') THEN
        RETURN NEW;
    END IF;
    named := array_remove(ARRAY[{_WHICH_SET}], NULL);
    IF cardinality(named) > 0 THEN
        RAISE EXCEPTION 'outbox.messages: % cannot be set by an INSERT (the daemon owns it)',
            array_to_string(named, ', ')
        USING ERRCODE = 'check_violation', SCHEMA = 'outbox', TABLE = 'messages',
              COLUMN = named[1],
              HINT = 'a new row starts queued, attempts 0, with no lease, wamid or outcome';
    END IF;
    NEW.created_at := now();
    NEW.updated_at := now();
    RETURN NEW;
END
$$
    """,
    # Named to fire before every other row trigger (same event, alphabetical order). The WHEN
    # keeps an ordinary row free of any call.
    f"""
CREATE TRIGGER messages_daemon_columns BEFORE INSERT ON outbox.messages FOR EACH ROW
WHEN ({_ANY_SET} OR NEW.created_at <> now() OR NEW.updated_at <> now())
EXECUTE FUNCTION outbox.refuse_daemon_columns()
    """,
    """
CREATE TABLE outbox.idempotency_keys (
    channel text NOT NULL,
    idempotency_key text NOT NULL,
    message_id bigint NOT NULL,
    created_at timestamptz NOT NULL,
    purged_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_idempotency_keys PRIMARY KEY (channel, idempotency_key)
)
    """,
    "CREATE INDEX ix_idempotency_keys_created_at ON outbox.idempotency_keys (created_at)",
    # Producers need no grant on the table: this one question is answered with its owner's
    # rights (a fixed search_path, so no caller's object can stand in for ours).
    """
CREATE FUNCTION outbox.idempotency_key_purged(channel text, idempotency_key text)
RETURNS boolean LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM outbox.idempotency_keys AS k
                   WHERE k.channel = $1 AND k.idempotency_key = $2)
$$
    """,
    """
CREATE FUNCTION outbox.skip_purged_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF outbox.idempotency_key_purged(NEW.channel, NEW.idempotency_key) THEN
        RETURN NULL;  -- the row is skipped, as ON CONFLICT DO NOTHING skips a live key's
    END IF;
    RETURN NEW;
END
$$
    """,
    # After messages_daemon_columns, before messages_head (whose line shortcut must not see a
    # skipped row).
    """
CREATE TRIGGER messages_dedup_purged BEFORE INSERT ON outbox.messages FOR EACH ROW
WHEN (NEW.idempotency_key IS NOT NULL) EXECUTE FUNCTION outbox.skip_purged_key()
    """,
]

# A recipient's key: its digits with one leading `00` dropped (the whole prefix, noise between
# its zeros included), as outbox.domain.request.normalise_recipient reads it. The longest match
# wins at the start of the string (an alternation is greedy), the plain noise elsewhere.
_OLD_DIGITS = "'[^0-9]', '', 'g'"
_NEW_DIGITS = "'^[^0-9]*0[^0-9]*0|[^0-9]', '', 'g'"
_KEYED = ("recipient_key(text, text)", "mark_head()", "mark_run()")


def _rekey(old: str, new: str) -> None:
    # The functions' own definitions with the key's pattern swapped: nothing else in them changes.
    for function in _KEYED:
        op.execute(
            f"""
DO $do$
BEGIN
    EXECUTE replace(pg_get_functiondef('outbox.{function}'::regprocedure), $p${old}$p$,
                    $p${new}$p$);
END
$do$
            """
        )


def upgrade() -> None:
    for statement in _UP:
        op.execute(statement)
    _rekey(_OLD_DIGITS, _NEW_DIGITS)
    declare_compatibility(revision, down_revision, compatible_with)


def downgrade() -> None:
    forget_compatibility(revision)
    _rekey(_NEW_DIGITS, _OLD_DIGITS)
    op.execute("DROP TRIGGER messages_dedup_purged ON outbox.messages")
    op.execute("DROP FUNCTION outbox.skip_purged_key()")
    op.execute("DROP FUNCTION outbox.idempotency_key_purged(text, text)")
    op.execute("DROP TABLE outbox.idempotency_keys")
    op.execute("DROP TRIGGER messages_daemon_columns ON outbox.messages")
    op.execute("DROP FUNCTION outbox.refuse_daemon_columns()")
    op.execute("ALTER TABLE outbox.messages DROP CONSTRAINT ck_messages_counters")
    op.execute("ALTER TABLE outbox.messages DROP CONSTRAINT ck_messages_finite_times")
    op.execute("ALTER TABLE outbox.messages ALTER COLUMN id SET GENERATED BY DEFAULT")
