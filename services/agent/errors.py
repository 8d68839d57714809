"""Errors of the agent, and their one mapping to job errors and message settlement.

::

    AgentError
     ├── LLMError          the model call failed (``retryable`` tells whether to try again)
     │    └── ToolRoundsExceeded  the model kept calling tools past the round limit
     ├── HistoryError      history did not load context or store the reply
     ├── JobStoreError     the job-state bucket did not answer
     │    └── JobConflict  the job changed since it was read (compare-and-set lost)
     ├── EventError        an outcome event or dead letter was not stored
     └── RecallError       the memory service did not recall memories
"""

from enum import Enum

from contracts.chat import JobError

REASON_LIMIT = 2000


class Settle(Enum):
    """What to tell JetStream about a delivered job message."""

    ACK = "ack"  # done (or nothing left to do): never deliver again
    RETRY = "retry"  # nak with a delay: deliver again later
    DROP = "drop"  # term: never deliver again, the outcome is recorded elsewhere


class AgentError(Exception):
    """A job step failed."""

    retryable = True


class LLMError(AgentError):
    """The model call failed."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class ToolRoundsExceeded(LLMError):
    """The model still called tools after the last allowed round (retrying would loop again)."""

    def __init__(self, rounds: int) -> None:
        super().__init__(
            f"the model hit the tool round limit ({rounds} rounds) without answering",
            retryable=False,
        )


class RecallError(AgentError):
    """The memory service did not recall memories."""


class HistoryError(AgentError):
    """History did not load the context or store the reply."""


class JobStoreError(AgentError):
    """The job-state bucket did not answer."""


class JobConflict(JobStoreError):
    """The job's state changed since it was read."""


class EventError(AgentError):
    """An outcome event or dead letter was not stored."""


def job_error_for(exc: BaseException) -> JobError:
    """Describe why a job failed, for the job state and the ``chat.failed`` event."""
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, LLMError):
        code = "llm_error"
    elif isinstance(exc, HistoryError | JobStoreError | EventError | RecallError):
        code = "unavailable"
    else:
        code = "internal"
        reason = f"unexpected {type(exc).__name__}: {reason}"
    return JobError(code=code, message=reason[:REASON_LIMIT])
