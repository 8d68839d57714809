"""The statements of the history service, written once for Postgres and SQLite.

Templates of :mod:`services.runtime.sql`: ``$n`` parameters, ``{s}.`` the schema,
``{any $n type}`` membership in a list, ``{pg: ...}`` text only Postgres runs.
The tables are declared in :mod:`services.history.models`.
"""

SESSION = (
    "id, user_id, persona, title, status, created_at, updated_at, archived_at, message_count"
)
MESSAGE = "id, session_id, user_id, role, content, created_at, job_id"
NEWEST_FIRST = "ORDER BY created_at DESC, id DESC"
# Unfinished jobs: user messages whose job has not ended (partial indexes hold just these).
UNFINISHED = "role = 'user' AND job_ended_at IS NULL"

GET_SESSION = f"SELECT {SESSION} FROM {{s}}.sessions WHERE id = $1"
LOCK_SESSION = f"{GET_SESSION} {{pg: FOR UPDATE}}"
LOCK_PERSONA = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"
ARCHIVE_ACTIVE = (
    "UPDATE {s}.sessions SET status = 'archived', archived_at = $3, updated_at = $3 "
    f"WHERE user_id = $1 AND persona = $2 AND status = 'active' RETURNING {SESSION}"
)
ARCHIVE = (
    "UPDATE {s}.sessions SET status = 'archived', archived_at = $2, updated_at = $2 "
    f"WHERE id = $1 RETURNING {SESSION}"
)
DELETE_SESSION = "DELETE FROM {s}.sessions WHERE id = $1"  # messages go by foreign key cascade
INSERT_SESSION = (
    f"INSERT INTO {{s}}.sessions ({SESSION}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
)
INSERT_EVENT = (
    "INSERT INTO {s}.outbox (msg_id, subject, payload, request_id, user_id, created_at, "
    "claimed_until) VALUES ($1, $2, $3, $4, $5, $6, $7)"
)
# The sessions a batch of appends writes to, locked in id order, after (on Postgres) the
# admission lock of each user of the batch, taken in key order: every batch takes its locks
# users first, then sessions, each in one order, so two batches never wait in a cycle. The
# locks come from a subquery the statement must read before it returns (and locks) a row.
LOCK_BATCH = (
    "{pg: WITH locks AS MATERIALIZED (SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT "
    "hashtextextended('history.user:' || u, 0) AS k FROM unnest($2::text[]) AS u ORDER BY k) "
    "AS keys)} SELECT id, user_id, persona, status, tail_job_id FROM {s}.sessions "
    "{pg: , (SELECT count(*) FROM locks) AS taken} WHERE id {any $1 uuid} ORDER BY id "
    "{pg: FOR UPDATE OF sessions}"
)
# SQLite has one writer, so whatever a batch reads after its BEGIN IMMEDIATE is current:
# its sessions come with their tails' state at once (and everything else in the same trip).
TARGETS_WITH_TAILS = (
    "SELECT s.id, s.user_id, s.persona, s.status, s.tail_job_id, t.created_at, "
    "t.job_ended_at FROM sessions s LEFT JOIN messages t "
    "ON t.job_id = s.tail_job_id AND t.role = 'user' WHERE s.id {any $1 uuid}"
)
# Everything else a batch reads, in one statement that starts after its locks are held (so
# it sees whatever the batches before it committed): the messages its jobs stored (``j``),
# the state of its sessions' tails (``t``), and for admission each user's unfinished jobs
# (``u``), the user messages each user sent within the rate window (``r``) and each probed
# session's unfinished jobs (``s``). The first branch names every column's type.
READ_BATCH = (
    "SELECT 'j', id, session_id, user_id, role, content, created_at, job_id, follows, "
    "job_ended_at FROM {s}.messages WHERE job_id {any $1 uuid} "
    "UNION ALL SELECT 't', NULL, session_id, user_id, NULL, NULL, created_at, job_id, NULL, "
    "job_ended_at FROM {s}.messages WHERE job_id {any $2 uuid} AND role = 'user' "
    "UNION ALL SELECT 'u', NULL, session_id, user_id, NULL, NULL, created_at, job_id, NULL, "
    f"NULL FROM {{s}}.messages WHERE user_id {{any $3 text}} AND {UNFINISHED} "
    "AND created_at > $6 "
    "UNION ALL SELECT 'r', NULL, session_id, user_id, NULL, NULL, created_at, job_id, NULL, "
    "NULL FROM {s}.messages WHERE user_id {any $4 text} AND role = 'user' AND created_at > $7 "
    "UNION ALL SELECT 's', NULL, session_id, user_id, NULL, NULL, created_at, job_id, NULL, "
    f"NULL FROM {{s}}.messages WHERE session_id {{any $5 uuid}} AND {UNFINISHED} "
    "AND created_at > $6"
)
SESSION_UNFINISHED = (
    "SELECT job_id FROM {s}.messages "
    f"WHERE session_id = $1 AND {UNFINISHED} AND created_at > $2 ORDER BY created_at"
)
INSERT_MESSAGE = (
    f"INSERT INTO {{s}}.messages ({MESSAGE}, follows) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
)
ADVANCE_SESSION = (
    "UPDATE {s}.sessions SET message_count = message_count + $2, updated_at = $3, "
    "tail_job_id = COALESCE($4, tail_job_id) WHERE id = $1"
)
END_JOBS = (
    "UPDATE {s}.messages SET job_ended_at = $2 "
    f"WHERE job_id {{any $1 uuid}} AND {UNFINISHED}"
)
# Ending an ended job keeps its first end: the row matches either way, so it says "known".
END_JOB = (
    "UPDATE {s}.messages SET job_ended_at = COALESCE(job_ended_at, $3) "
    "WHERE job_id = $1 AND role = 'user' AND user_id = $2"
)
# An append batch's writes on Postgres in one round trip: data-modifying CTEs over arrays.
WRITE_BATCH = (
    "WITH m AS (INSERT INTO {s}.messages (id, session_id, user_id, role, content, created_at, "
    "job_id, follows) SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], "
    "$5::text[], $6::timestamptz[], $7::uuid[], $8::uuid[])), "
    "a AS (UPDATE {s}.sessions AS t SET message_count = t.message_count + u.added, "
    "updated_at = $9, tail_job_id = COALESCE(u.tail, t.tail_job_id) "
    "FROM unnest($10::uuid[], $11::int[], $12::uuid[]) AS u(id, added, tail) WHERE t.id = u.id), "
    f"e AS (UPDATE {{s}}.messages SET job_ended_at = $9 WHERE job_id = ANY($13::uuid[]) "
    f"AND {UNFINISHED}), "
    "o AS (INSERT INTO {s}.outbox (msg_id, subject, payload, request_id, user_id, created_at, "
    "claimed_until) SELECT * FROM unnest($14::text[], $15::text[], $16::text[], $17::text[], "
    "$18::text[], $19::timestamptz[], $20::timestamptz[])), "
    "k AS (UPDATE {s}.outbox SET sent_at = $9, claimed_until = NULL "
    "WHERE msg_id = ANY($21::text[])) SELECT 1"
)
MARK_SENT = (
    "UPDATE {s}.outbox SET sent_at = $2, claimed_until = NULL WHERE msg_id {any $1 text}"
)
SEARCH = (
    f"SELECT {MESSAGE} FROM {{s}}.messages WHERE user_id = $1 "
    f"AND lower(content) LIKE $2 ESCAPE '\\' {NEWEST_FIRST} LIMIT $3"
)

# ---- outbox relay ------------------------------------------------------------------------

RELEASE = (
    "UPDATE {s}.outbox SET claimed_until = NULL, attempts = attempts + 1, last_error = $2 "
    "WHERE msg_id = $1"
)
# Claimed in seq order for a lease; replicas skip each other's locked rows on Postgres.
CLAIM = (
    "UPDATE {s}.outbox SET claimed_until = $2 WHERE seq IN (SELECT seq FROM {s}.outbox "
    "WHERE sent_at IS NULL AND (claimed_until IS NULL OR claimed_until < $1) "
    "ORDER BY seq LIMIT $3 {pg: FOR UPDATE SKIP LOCKED}) "
    "RETURNING seq, msg_id, subject, payload, request_id, user_id"
)
SENT_SEQS = "UPDATE {s}.outbox SET sent_at = $2 WHERE seq {any $1 bigint}"
RELEASE_SEQS = "UPDATE {s}.outbox SET claimed_until = NULL WHERE seq {any $1 bigint}"
FAILED_SEQS = (
    "UPDATE {s}.outbox SET claimed_until = NULL, attempts = attempts + 1, last_error = $2 "
    "WHERE seq {any $1 bigint}"
)
PRUNE = "DELETE FROM {s}.outbox WHERE sent_at < $1"
