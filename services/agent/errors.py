"""Errors of the agent, and their one mapping to job errors.

::

    AgentError
     ├── LLMError          the model call failed (``retryable`` tells whether to try again)
     │    └── ToolRoundsExceeded  the model kept calling tools past the round limit
     ├── HistoryError      history did not load context or store the reply
     │    └── SessionGone  history no longer has the job's session (deleted)
     ├── JobStoreError     the job-state bucket did not answer
     │    └── JobConflict  the job changed since it was read (compare-and-set lost)
     ├── EventError        a final event or dead letter was not stored
     └── RecallError       the memory service did not recall memories

How a delivery is settled is decided in one place: :mod:`services.agent.service`.
"""

from contracts.chat import JobError

REASON_LIMIT = 2000


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


class SessionGone(HistoryError):
    """The job's session was deleted: there is nobody left to answer."""

    retryable = False


class JobStoreError(AgentError):
    """The job-state bucket did not answer."""


class JobConflict(JobStoreError):
    """The job's state changed since it was read."""


class EventError(AgentError):
    """A final event or dead letter was not stored."""


def job_error_for(exc: BaseException) -> JobError:
    """Describe why a job failed, for the job state and its final event."""
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, LLMError):
        code = "llm_error"
    elif isinstance(exc, HistoryError | JobStoreError | EventError | RecallError):
        code = "unavailable"
    else:
        code = "internal"
        reason = f"unexpected {type(exc).__name__}: {reason}"
    return JobError(code=code, message=reason[:REASON_LIMIT])
