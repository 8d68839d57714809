"""What an append batch reads and writes, in as few statements as each backend allows.

Postgres: lock the users' admissions and the sessions (one statement), read the
sessions' tails, earlier copies of the batch's messages and what admission needs
(one statement, under the locks), write everything (one statement of
data-modifying CTEs). SQLite, one writer: the reads in the trip that begins the
transaction, the writes in the trip that commits it.
"""

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from uuid import UUID

from contracts.history import MessageRecord, Role
from services.history.errors import DuplicateMessage
from services.history.statements import (
    ADVANCE_SESSION,
    END_JOBS,
    INSERT_EVENT,
    INSERT_MESSAGE,
    LOCK_BATCH,
    MARK_SENT,
    READ_BATCH,
    TARGETS_WITH_TAILS,
    WRITE_BATCH,
)
from services.history.store import Event, Tx
from services.runtime.sql import IntegrityError, Row, maybe_time, maybe_uuid, time_of, uuid_of


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



async def load_batch(
    tx: Tx,
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
    if tx.postgres:
        found = await tx.tx.fetch(LOCK_BATCH, list(session_ids), sorted(users))
        targets = {
            t.id: t
            for t in (
                Target(uuid_of(r[0]), r[1], r[2], r[3], maybe_uuid(r[4]), None, None)
                for r in found
            )
        }
        rest[1] = [t.tail_job_id for t in targets.values() if t.tail_job_id is not None]
        rows = await tx.tx.fetch(READ_BATCH, *rest)  # under the locks: a fresh snapshot
    else:
        found, rows = await tx.tx.fetch_all(
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
    stored, facts = _batch_rows(rows, targets, users, senders, probed)
    return targets, stored, facts

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


async def write_batch(
    tx: Tx,
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
        if tx.postgres:
            await tx.tx.fetch(
                WRITE_BATCH, *_columns(messages, 8), at, *_session_columns(sessions),
                list(ended), *_columns(outbox, 7), list(sent),
            )
            return
        await tx.tx.finish(
            (INSERT_MESSAGE, messages),
            (ADVANCE_SESSION, sessions),
            (END_JOBS, [(list(ended), at)] if ended else []),
            (INSERT_EVENT, outbox),
            (MARK_SENT, [(list(sent), at)] if sent else []),
        )
    except IntegrityError as exc:
        raise DuplicateMessage(records[0].job_id if records else None) from exc


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Turn rows into one list per column (Postgres takes arrays for unnest)."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * width


def _session_columns(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Return the (id, added, tail) columns of the session rows (id, added, at, tail)."""
    return [[r[0] for r in rows], [r[1] for r in rows], [r[3] for r in rows]]


