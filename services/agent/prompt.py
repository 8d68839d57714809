"""Build the prompt of a job: system message and memories, earlier messages, the user's message."""

from collections.abc import Sequence
from uuid import UUID

from contracts.chat import RequestChat
from contracts.history import MessageRecord
from contracts.memory import MemoryRecord
from services.agent.llm import ChatMessage


def system_message(template: str, persona: str) -> ChatMessage:
    """Fill the persona into the system prompt (``{persona}``; other braces stay as written)."""
    return {"role": "system", "content": template.replace("{persona}", persona)}


def earlier_messages(
    request: RequestChat, recent: Sequence[MessageRecord], limit: int
) -> list[MessageRecord]:
    """Pick the context of a job from a session's recent messages (newest first).

    The job's own message is dropped (the request carries it), and so is anything
    stored after it, except the replies to earlier messages: jobs of a session run
    in order, so the reply to the message before ours is usually stored after ours
    was queued, and it is context. Each reply follows its own user message. The
    result is oldest first, at most ``limit`` messages.
    """
    newest_first = list(recent)
    later: list[MessageRecord] = []
    for index, message in enumerate(newest_first):
        if message.id == request.message_id or (
            message.job_id == request.job_id and message.role == "user"
        ):
            later, newest_first = newest_first[:index], newest_first[index + 1 :]
            break
    before = [m for m in reversed(newest_first) if m.job_id != request.job_id]
    asked = {m.job_id for m in before if m.role == "user" and m.job_id is not None}
    replies: dict[UUID | None, MessageRecord] = {
        m.job_id: m for m in [*later, *before] if m.role == "assistant" and m.job_id in asked
    }
    kept: list[MessageRecord] = []
    for message in before:
        if message.role == "assistant" and message.job_id in replies:
            continue  # placed right after the message it answers
        kept.append(message)
        if message.role == "user" and (reply := replies.get(message.job_id)) is not None:
            kept.append(reply)
    return kept[-limit:] if limit > 0 else []


MEMORY_HEADING = "What you remember about the user from earlier conversations:"


def estimate_tokens(text: str) -> int:
    """Estimate the tokens of a text as a quarter of its characters, rounded up."""
    return (len(text) + 3) // 4


def within_budget(messages: Sequence[MessageRecord], budget: int) -> list[MessageRecord]:
    """Keep the newest messages (oldest first) whose estimated tokens fit in ``budget``."""
    kept: list[MessageRecord] = []
    used = 0
    for message in reversed(messages):
        used += estimate_tokens(message.content)
        if used > budget:
            break
        kept.append(message)
    return kept[::-1]


def build_context(
    request: RequestChat,
    recent: Sequence[MessageRecord],
    memories: Sequence[MemoryRecord],
    template: str,
    *,
    limit: int,
    token_budget: int | None,
) -> list[ChatMessage]:
    """Return ``[system + memories, ...earlier within the budget, user]`` for the model."""
    system = system_message(template, request.persona)
    if memories:
        facts = "\n".join(f"- {memory.content}" for memory in memories)
        system["content"] = f"{system['content']}\n\n{MEMORY_HEADING}\n{facts}"
    earlier = earlier_messages(request, recent, limit)
    if token_budget is not None:
        earlier = within_budget(earlier, token_budget)
    context: list[ChatMessage] = [{"role": m.role, "content": m.content} for m in earlier]
    user: ChatMessage = {"role": "user", "content": request.content}
    return [system, *context, user]


def build_prompt(
    request: RequestChat, recent: Sequence[MessageRecord], template: str, limit: int
) -> list[ChatMessage]:
    """Return ``[system, ...earlier, user]`` for the model (no memories, no token budget)."""
    return build_context(request, recent, (), template, limit=limit, token_budget=None)
