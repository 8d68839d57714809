"""Persistence of sessions, messages and outbox rows: queries only, no rules.

Every statement is written once below as a template of :mod:`services.runtime.sql`
(asyncpg on Postgres, sqlite3 threads on SQLite); the tables themselves are
declared in :mod:`services.history.models` and created by its migrations.
"""

from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from uuid import UUID

from contracts.base import Contract
from contracts.history import MessageRecord, Role, SessionRecord, SessionStatus
from services.history.errors import ActiveSessionExists, DuplicateMessage
from services.runtime.cursor import Position
from services.runtime.sql import IntegrityError, Row, Sql, maybe_time, maybe_uuid, time_of, uuid_of
from services.runtime.sql import Tx as SqlTx

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


@dataclass(frozen=True, slots=True)
class Target:
    """A session a batch of appends writes to, as locked."""

    id: UUID
    user_id: str
    persona: str
    status: str
    tail_job_id: UUID | None
    tail_created_at: datetime | None  # of the tail job's user message
    tail_ended_at: datetime | None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as stored, with the job its job follows (user messages)."""

    record: MessageRecord
    follows: UUID | None


@dataclass(frozen=True, slots=True)
class Facts:
    """What admission reads: unfinished jobs per user and session, recent sends per user."""

    unfinished: dict[str, set[UUID]]
    sent: dict[str, list[datetime]]
    session_jobs: dict[UUID, dict[UUID, datetime]]


@dataclass(frozen=True, slots=True)
class Event:
    """An outbox row to insert; ``body`` is the model its payload was made from (not stored)."""

    msg_id: str
    subject: str
    payload: str
    request_id: str
    user_id: str | None
    created_at: datetime
    claimed_until: datetime | None = None
    body: Contract | None = None


class Store:
    """Open read or write transactions on the history database."""

    def __init__(self, sql: Sql) -> None:
        self.sql = sql
        self.postgres = sql.dialect == "postgresql"

    @asynccontextmanager
    async def read(self) -> AsyncIterator["Tx"]:
        """Run queries that need no snapshot of their own (each sees the latest commit)."""
        async with self.sql.read() as tx:
            yield Tx(tx, self.postgres)

    @asynccontextmanager
    async def write(self) -> AsyncIterator["Tx"]:
        """Run queries in one write transaction, committed when the block exits cleanly."""
        async with self.sql.write() as tx:
            yield Tx(tx, self.postgres)


class Tx:
    """The queries of one transaction."""

    def __init__(self, tx: SqlTx, postgres: bool) -> None:
        self.tx = tx
        self.postgres = postgres

    async def get_session(self, session_id: UUID, *, lock: bool = False) -> SessionRecord | None:
        """Return a session by id; ``lock`` holds its row until the transaction ends."""
        rows = await self.tx.fetch(LOCK_SESSION if lock else GET_SESSION, session_id)
        return _session(rows[0]) if rows else None

    async def lock_persona(self, user_id: str, persona: str) -> None:
        """Hold a lock on the user's persona until the transaction ends (Postgres only)."""
        if self.postgres:
            await self.tx.fetch(LOCK_PERSONA, f"history.session:{user_id}:{persona}")
        # SQLite write transactions begin IMMEDIATE: they are serialised already.

    async def archive_active(self, user_id: str, persona: str, at: datetime) -> list[SessionRecord]:
        """Archive the user's active sessions with the persona and return them."""
        return [_session(row) for row in await self.tx.fetch(ARCHIVE_ACTIVE, user_id, persona, at)]

    async def archive_session(self, session_id: UUID, at: datetime) -> SessionRecord:
        """Archive one session and return it as stored."""
        [row] = await self.tx.fetch(ARCHIVE, session_id, at)
        return _session(row)

    async def delete_session(self, session_id: UUID) -> bool:
        """Delete a session; its messages go with it (foreign key cascade)."""
        return bool(await self.tx.execute(DELETE_SESSION, session_id))

    async def add_events(self, events: Sequence[Event]) -> None:
        """Queue events in the outbox; they commit or roll back with the transaction."""
        if events:
            await self.tx.executemany(
                INSERT_EVENT,
                [
                    (e.msg_id, e.subject, e.payload, e.request_id, e.user_id, e.created_at,
                     e.claimed_until)
                    for e in events
                ],
            )

    async def insert_session(self, r: SessionRecord) -> None:
        """Insert a session, or raise :class:`ActiveSessionExists` on a concurrent create."""
        try:
            await self.tx.execute(
                INSERT_SESSION, r.id, r.user_id, r.persona, r.title, r.status, r.created_at,
                r.updated_at, r.archived_at, r.message_count,
            )
        except IntegrityError as exc:
            raise ActiveSessionExists(r.user_id, r.persona) from exc

    async def list_sessions(
        self,
        user_id: str,
        *,
        status: SessionStatus | None,
        persona: str | None,
        after: Position | None,
        limit: int,
    ) -> list[SessionRecord]:
        """Return up to ``limit`` sessions older than ``after``, newest first."""
        where, args = ["user_id = $1"], [user_id]
        if status is not None:
            args.append(status)
            where.append(f"status = ${len(args)}")
        if persona is not None:
            args.append(persona)
            where.append(f"persona = ${len(args)}")
        query, params = _page(f"SELECT {SESSION} FROM {{s}}.sessions", where, args, after, limit)
        return [_session(row) for row in await self.tx.fetch(query, *params)]

    async def load_batch(
        self,
        session_ids: Collection[UUID],
        job_ids: Collection[UUID],
        *,
        users: Collection[str],
        senders: Collection[str],
        probed: Collection[UUID],
        horizon: datetime,
        since: datetime,
    ) -> tuple[dict[UUID, Target], dict[tuple[UUID, Role], StoredMessage], Facts]:
        """Lock an append batch's users (Postgres) and sessions, then read the sessions
        with their tails, the messages its jobs stored (by job and role), and for admission
        the unfinished jobs (created after ``horizon``) of ``users`` and of the ``probed``
        sessions and the user messages ``senders`` sent after ``since``."""
        rest = [list(job_ids), [], list(users), list(senders), list(probed), horizon, since]
        if self.postgres:
            found = await self.tx.fetch(LOCK_BATCH, list(session_ids), sorted(users))
            targets = {
                t.id: t
                for t in (
                    Target(uuid_of(r[0]), r[1], r[2], r[3], maybe_uuid(r[4]), None, None)
                    for r in found
                )
            }
            rest[1] = [t.tail_job_id for t in targets.values() if t.tail_job_id is not None]
            rows = await self.tx.fetch(READ_BATCH, *rest)  # under the locks: a fresh snapshot
        else:
            found, rows = await self.tx.fetch_all(
                (TARGETS_WITH_TAILS, [list(session_ids)]), (READ_BATCH, rest)
            )
            targets = {
                t.id: t
                for t in (
                    Target(
                        uuid_of(r[0]), r[1], r[2], r[3], maybe_uuid(r[4]), maybe_time(r[5]),
                        maybe_time(r[6]),
                    )
                    for r in found
                )
            }
        stored, facts = self._batch_rows(rows, targets, users, senders, probed)
        return targets, stored, facts

    @staticmethod
    def _batch_rows(
        rows: Sequence[Row],
        targets: dict[UUID, Target],
        users: Collection[str],
        senders: Collection[str],
        probed: Collection[UUID],
    ) -> tuple[dict[tuple[UUID, Role], StoredMessage], Facts]:
        tails = {t.tail_job_id: t for t in targets.values() if t.tail_job_id is not None}
        stored: dict[tuple[UUID, Role], StoredMessage] = {}
        facts = Facts({u: set() for u in users}, {u: [] for u in senders}, {s: {} for s in probed})
        for row in rows:
            kind = row[0]
            if kind == "j":
                message = MessageRecord(
                    id=uuid_of(row[1]), session_id=uuid_of(row[2]), user_id=row[3],
                    role=row[4], content=row[5], created_at=time_of(row[6]),
                    job_id=uuid_of(row[7]),
                )
                stored[(uuid_of(row[7]), row[4])] = StoredMessage(message, maybe_uuid(row[8]))
            elif kind == "t":
                tail = tails[uuid_of(row[7])]
                targets[tail.id] = replace(
                    tail, tail_created_at=time_of(row[6]), tail_ended_at=maybe_time(row[9])
                )
            elif kind == "u":
                facts.unfinished[row[3]].add(uuid_of(row[7]))
            elif kind == "r":
                facts.sent[row[3]].append(time_of(row[6]))
            else:
                facts.session_jobs[uuid_of(row[2])][uuid_of(row[7])] = time_of(row[6])
        return stored, facts

    async def session_unfinished(self, session_id: UUID, horizon: datetime) -> list[UUID]:
        """Return the session's unfinished jobs created after ``horizon``, oldest first."""
        rows = await self.tx.fetch(SESSION_UNFINISHED, session_id, horizon)
        return [uuid_of(row[0]) for row in rows]

    async def write_batch(
        self,
        records: Sequence[MessageRecord],
        follows: Mapping[UUID, UUID | None],
        added: Mapping[UUID, int],
        tails: Mapping[UUID, UUID],
        ended: Sequence[UUID],
        events: Sequence[Event],
        sent: Sequence[str],
        at: datetime,
    ) -> None:
        """Write an append batch: insert its messages (a user message with the job it
        follows), advance its sessions (count, ``updated_at``, tail), end the replied jobs,
        queue its events, mark published events sent; on SQLite, commit too.

        Raise :class:`DuplicateMessage` if a message's (job, role) exists.
        """
        messages = [
            (r.id, r.session_id, r.user_id, r.role, r.content, r.created_at, r.job_id,
             follows.get(r.id))
            for r in records
        ]
        sessions = [(sid, n, at, tails.get(sid)) for sid, n in sorted(added.items())]
        outbox = [
            (e.msg_id, e.subject, e.payload, e.request_id, e.user_id, e.created_at,
             e.claimed_until)
            for e in events
        ]
        try:
            if self.postgres:
                await self.tx.fetch(
                    WRITE_BATCH, *_columns(messages, 8), at, *_session_columns(sessions),
                    list(ended), *_columns(outbox, 7), list(sent),
                )
                return
            await self.tx.finish(
                (INSERT_MESSAGE, messages),
                (ADVANCE_SESSION, sessions),
                (END_JOBS, [(list(ended), at)] if ended else []),
                (INSERT_EVENT, outbox),
                (MARK_SENT, [(list(sent), at)] if sent else []),
            )
        except IntegrityError as exc:
            raise DuplicateMessage(records[0].job_id if records else None) from exc

    async def end_job(self, user_id: str, job_id: UUID, at: datetime) -> bool:
        """Mark one of the user's jobs ended (kept if it was); tell whether it exists."""
        return bool(await self.tx.execute(END_JOB, job_id, user_id, at))

    async def list_messages(
        self, session_id: UUID, *, after: Position | None, limit: int
    ) -> list[MessageRecord]:
        """Return up to ``limit`` messages of a session older than ``after``, newest first."""
        query, params = _page(
            f"SELECT {MESSAGE} FROM {{s}}.messages", ["session_id = $1"], [session_id], after,
            limit,
        )
        return [_message(row) for row in await self.tx.fetch(query, *params)]

    async def list_feed(
        self, user_id: str, *, after: Position | None, limit: int
    ) -> list[MessageRecord]:
        """Return up to ``limit`` of the user's messages older than ``after``, newest first."""
        query, params = _page(
            f"SELECT {MESSAGE} FROM {{s}}.messages", ["user_id = $1"], [user_id], after, limit
        )
        return [_message(row) for row in await self.tx.fetch(query, *params)]

    async def search_messages(self, user_id: str, text: str, limit: int) -> list[MessageRecord]:
        """Return up to ``limit`` of the user's messages containing ``text``, newest first."""
        # A plain substring: % and _ match themselves. lower() folds ASCII only on SQLite.
        escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = await self.tx.fetch(SEARCH, user_id, f"%{escaped}%", limit)
        return [_message(row) for row in rows]


def _page(
    select: str, where: list[str], args: list[Any], after: Position | None, limit: int
) -> tuple[str, list[Any]]:
    """Order newest first and keep the rows strictly after the cursor position."""
    if after is not None:
        # A row-value comparison is an index bound on both backends, so a deep page
        # starts at the cursor instead of filtering every newer row.
        args = [*args, after.created_at, after.id]
        where = [*where, f"(created_at, id) < (${len(args) - 1}, ${len(args)})"]
    args = [*args, limit]
    return f"{select} WHERE {' AND '.join(where)} {NEWEST_FIRST} LIMIT ${len(args)}", args


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Turn rows into one list per column (Postgres takes arrays for unnest)."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * width


def _session_columns(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Return the (id, added, tail) columns of the session rows (id, added, at, tail)."""
    return [[r[0] for r in rows], [r[1] for r in rows], [r[3] for r in rows]]


def _session(row: Row) -> SessionRecord:
    return SessionRecord(
        id=uuid_of(row[0]), user_id=row[1], persona=row[2], title=row[3], status=row[4],
        created_at=time_of(row[5]), updated_at=time_of(row[6]), archived_at=maybe_time(row[7]),
        message_count=row[8],
    )


def _message(row: Row) -> MessageRecord:
    return MessageRecord(
        id=uuid_of(row[0]), session_id=uuid_of(row[1]), user_id=row[2], role=row[3],
        content=row[4], created_at=time_of(row[5]), job_id=maybe_uuid(row[6]),
    )
