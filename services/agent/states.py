"""Change a job's state from its latest revision, so a concurrent change is never lost.

The gateway and the agent both write a running job (the gateway sets
``cancel_requested``, the agent its lease and outcome): every change here reads
the latest revision, edits it and writes it back by compare-and-set, retrying
when someone else wrote in between.
"""

from collections.abc import Callable
from dataclasses import dataclass
from uuid import UUID

from contracts.chat import JobState
from services.agent.errors import JobConflict
from services.agent.jobs import Versioned
from services.agent.ports import JobStore

MAX_ROUNDS = 20


@dataclass(frozen=True)
class Change:
    """The state after an edit, and whether the edit wrote it."""

    latest: Versioned | None
    written: bool


async def modify(
    jobs: JobStore, job_id: UUID, edit: Callable[[JobState], JobState | None]
) -> Change:
    """Apply ``edit`` to the latest state and write it back; ``edit`` returns None to skip."""
    for _ in range(MAX_ROUNDS):
        latest = await jobs.get(job_id)
        if latest is None:
            return Change(None, written=False)
        new = edit(latest.state)
        if new is None:
            return Change(latest, written=False)
        try:
            return Change(await jobs.update(new, latest.revision), written=True)
        except JobConflict:
            continue
    raise JobConflict(f"job {job_id} kept changing under {MAX_ROUNDS} writers")
