"""What the agent keeps about each job running in this replica, so it can stop it."""

import asyncio
from dataclasses import dataclass, field
from uuid import UUID


@dataclass
class JobControl:
    """The handle of one running job: its cancel flag and the task calling the model."""

    job_id: UUID
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    work: "asyncio.Task[str] | None" = None
    counted: bool = False  # this delivery counted an attempt (undone when handed back)
    tools: tuple[str, ...] = ()  # the tools the model called, recorded when the job completes

    def cancel(self) -> None:
        """Stop the job: cancelling the model task closes its HTTP stream at once."""
        self.cancelled.set()
        if self.work is not None and not self.work.done():
            self.work.cancel()


class RunningJobs:
    """The jobs this replica runs right now, by id."""

    def __init__(self) -> None:
        self.jobs: dict[UUID, JobControl] = {}

    def __contains__(self, job_id: object) -> bool:
        return job_id in self.jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def add(self, job_id: UUID) -> JobControl:
        """Register a job that starts running here."""
        control = self.jobs[job_id] = JobControl(job_id)
        return control

    def discard(self, job_id: UUID) -> None:
        """Forget a job that stopped running here."""
        self.jobs.pop(job_id, None)

    def cancel(self, job_id: UUID) -> bool:
        """Stop a job if it runs here; return whether it did."""
        control = self.jobs.get(job_id)
        if control is None:
            return False
        control.cancel()
        return True
