"""Build the prompt of a job: system message, earlier messages oldest first, the user's message."""

from collections.abc import Sequence

from contracts.chat import RequestChat
from contracts.history import MessageRecord
from services.agent.llm import ChatMessage


def system_message(template: str, persona: str) -> ChatMessage:
    """Fill the persona into the system prompt (``{persona}``; other braces stay as written)."""
    return {"role": "system", "content": template.replace("{persona}", persona)}


def earlier_messages(
    request: RequestChat, recent: Sequence[MessageRecord], limit: int
) -> list[MessageRecord]:
    """Pick the context of a job from a session's recent messages (newest first).

    The job's own message is dropped (the request carries it), and so is anything
    stored after it: a later message is not context of an earlier one. The result
    is oldest first, at most ``limit`` messages.
    """
    newest_first = list(recent)
    for index, message in enumerate(newest_first):
        if message.id == request.message_id or (
            message.job_id == request.job_id and message.role == "user"
        ):
            newest_first = newest_first[index + 1 :]
            break
    kept = [m for m in newest_first if m.job_id != request.job_id][:limit]
    kept.reverse()
    return kept


def build_prompt(
    request: RequestChat, recent: Sequence[MessageRecord], template: str, limit: int
) -> list[ChatMessage]:
    """Return ``[system, ...earlier, user]`` for the model."""
    context: list[ChatMessage] = [
        {"role": m.role, "content": m.content} for m in earlier_messages(request, recent, limit)
    ]
    user: ChatMessage = {"role": "user", "content": request.content}
    return [system_message(template, request.persona), *context, user]
