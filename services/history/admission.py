"""Admission of a user message's job: limits, per-session order and multitask, decided in memory.

An append batch locks its sessions (and, on Postgres, its users), reads the
facts once (:class:`~services.history.store.Facts`), then asks
:class:`Admissions` about each append in arrival order. Every admitted job and
every stored reply changes the facts the next append sees, so a batch decides
exactly as if its appends had come one by one.

A job is *unfinished* from its user message until its reply is stored or
``EndJob`` says it ended (failed, cancelled). Only jobs created within
:data:`JOB_HORIZON` count: a job whose end was never reported (a crash between
the model call and the report, an agent bug) stops holding a user's limit and
a session's order after a day instead of forever.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from contracts import subjects
from contracts.history import Admission, AppendMessage
from services.history.batch import Facts, StoredMessage, Target
from services.history.errors import Conflict, RateLimited, TooManyJobs

JOB_HORIZON = timedelta(hours=24)
# Refused for too many unfinished jobs: when one ends is unknown; a job takes seconds,
# so asking again this much later is about right without hammering.
JOBS_RETRY_AFTER = 2.0
RATE_WINDOW = timedelta(seconds=subjects.RATE_WINDOW_SECONDS)


@dataclass(frozen=True, slots=True)
class Admitted:
    """An admitted job: what it follows and the jobs it interrupts."""

    follows: UUID | None
    interrupted: tuple[UUID, ...]


@dataclass(slots=True)
class _Order:
    tail: UUID | None
    tail_open: bool
    jobs: dict[UUID, datetime] | None  # unfinished jobs, when probed


@dataclass(frozen=True, slots=True)
class Needs:
    """Which facts a batch must read before it can decide."""

    users: frozenset[str]  # with a limit on unfinished jobs
    senders: frozenset[str]  # with a limit on messages per minute
    probed: frozenset[UUID]  # sessions whose unfinished jobs matter (reject, interrupt)


def needs(appends: Iterable[AppendMessage]) -> Needs:
    """Return the facts the user appends of a batch may depend on (repeats included: which
    appends repeat is read under the locks these facts need)."""
    users: set[str] = set()
    senders: set[str] = set()
    probed: set[UUID] = set()
    for req in appends:
        admission = req.admission
        if req.role != "user" or admission is None:
            continue
        if admission.multitask != "enqueue":
            probed.add(req.session_id)
        if admission.max_active_jobs:
            users.add(req.user_id)
        if admission.max_messages_per_minute:
            senders.add(req.user_id)
    return Needs(frozenset(users), frozenset(senders), frozenset(probed))


class Admissions:
    """Decide the admissions of one batch, in order, against facts read under its locks."""

    def __init__(self, now: datetime, targets: dict[UUID, Target], facts: Facts) -> None:
        self.now = now
        horizon = now - JOB_HORIZON
        self.orders = {
            sid: _Order(
                t.tail_job_id,
                t.tail_job_id is not None
                and t.tail_ended_at is None
                and t.tail_created_at is not None
                and t.tail_created_at > horizon,
                None,
            )
            for sid, t in targets.items()
        }
        self.unfinished = facts.unfinished
        # Newest first: the n-th newest message is the one whose leaving frees a place.
        self.sent = {u: sorted(ts, reverse=True) for u, ts in facts.sent.items()}
        for sid, jobs in facts.session_jobs.items():
            if sid in self.orders:
                self.orders[sid].jobs = dict(jobs)

    def admit(self, req: AppendMessage, admission: Admission) -> Admitted:
        """Admit the job of a new user message, or raise why not (nothing is stored then)."""
        order = self.orders[req.session_id]
        if admission.multitask == "reject" and order.jobs:
            raise Conflict("the session has a job queued or running")
        limit = admission.max_active_jobs
        jobs = self.unfinished.get(req.user_id)
        if limit and jobs is not None and len(jobs) >= limit:
            raise TooManyJobs(f"at most {limit} unfinished jobs per user", JOBS_RETRY_AFTER)
        per_minute = admission.max_messages_per_minute
        sent = self.sent.get(req.user_id)
        if per_minute and sent is not None and len(sent) >= per_minute:
            frees = sent[per_minute - 1] + RATE_WINDOW
            raise RateLimited(
                f"at most {per_minute} messages per minute", (frees - self.now).total_seconds()
            )
        admitted = Admitted(
            follows=order.tail if order.tail_open else None,
            interrupted=tuple(j for j in order.jobs or () if j != req.job_id)
            if admission.multitask == "interrupt"
            else (),
        )
        if jobs is not None:
            jobs.add(req.job_id)
        if sent is not None:
            sent.insert(0, self.now)
        if order.jobs is not None:
            order.jobs[req.job_id] = self.now
        order.tail, order.tail_open = req.job_id, True
        return admitted

    def repeated(self, req: AppendMessage, stored: StoredMessage) -> Admitted:
        """Answer a repeated user append as first answered: same follows; an interrupt names
        the session's jobs still unfinished that came before it."""
        admission = req.admission
        order = self.orders.get(req.session_id)
        interrupted: tuple[UUID, ...] = ()
        if admission is not None and admission.multitask == "interrupt" and order and order.jobs:
            at = stored.record.created_at
            interrupted = tuple(
                j for j, created in order.jobs.items() if j != req.job_id and created < at
            )
        return Admitted(follows=stored.follows, interrupted=interrupted)

    def replied(self, req: AppendMessage) -> None:
        """Note that a job's reply was stored in this batch: the job is no longer unfinished."""
        jobs = self.unfinished.get(req.user_id)
        if jobs is not None:
            jobs.discard(req.job_id)
        order = self.orders.get(req.session_id)
        if order is not None:
            if order.jobs is not None:
                order.jobs.pop(req.job_id, None)
            if order.tail == req.job_id:
                order.tail_open = False
