"""Tools the model may call: a registry where adding a tool is one decorated async function.

::

    class RecallArgs(BaseModel): ...

    @tool("recall_memories")
    async def recall_memories(args: RecallArgs, ctx: ToolContext) -> str:
        \"\"\"Recall what you remember about the user.\"\"\"   # the description the model sees

The argument model is both the JSON schema offered to the model and the validator of what
it sends back. The user id never comes from the model: :class:`ToolContext` carries the
job's user, persona and request metadata, and every argument model forbids extra fields,
so arguments naming a user are refused. A tool never raises into the loop: bad arguments,
an unknown name or a failed lookup become the text of the tool result, for the model to read.
"""

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, get_type_hints

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.history import SearchMessages
from contracts.memory import RecallMemories
from services.agent.errors import AgentError
from services.agent.ports import Lookups
from services.runtime.meta import RequestMeta

log = structlog.get_logger("chatbus.agent.tools")
A = TypeVar("A", bound=BaseModel)
ToolFn = Callable[[A, "ToolContext"], Awaitable[str]]
RESULT_CHARS = 4000  # a tool result is prompt text: keep one lookup from flooding the context
TOOL_HITS = 20


@dataclass(frozen=True)
class ToolContext:
    """Who a tool acts for (always the job's user) and the clients it may use."""

    user_id: str
    persona: str
    meta: RequestMeta
    lookups: Lookups


@dataclass(frozen=True)
class Tool:
    """One registered tool: its name, description, argument model and function."""

    name: str
    description: str
    args: type[BaseModel]
    run: Callable[[Any, ToolContext], Awaitable[str]]

    def spec(self) -> dict[str, Any]:
        """Return the OpenAI ``tools`` entry of this tool."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.args.model_json_schema(),
            },
        }


class ToolSet(Protocol):
    """What the tool loop needs of the tools it offers (a registry, or a toolbox of several)."""

    def __bool__(self) -> bool: ...
    def __contains__(self, name: object) -> bool: ...
    def specs(self) -> list[Mapping[str, Any]]: ...
    async def call(self, name: str, arguments: str, ctx: "ToolContext") -> str: ...


class ToolRegistry:
    """The tools offered to the model, by name."""

    def __init__(self) -> None:
        self.tools: dict[str, Tool] = {}
        self._specs: list[Mapping[str, Any]] | None = None

    def tool(self, name: str) -> Callable[[ToolFn[A]], ToolFn[A]]:
        """Register an async function ``(args: Model, ctx: ToolContext) -> str`` as a tool."""

        def register(fn: ToolFn[A]) -> ToolFn[A]:
            first = next(iter(inspect.signature(fn).parameters))
            model = get_type_hints(fn)[first]
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise TypeError(f"tool {name}: the first argument must be a pydantic model")
            if name in self.tools:
                raise ValueError(f"tool {name} is registered already")
            description = inspect.getdoc(fn) or name
            self.tools[name] = Tool(name, description, model, fn)
            self._specs = None
            return fn

        return register

    def __bool__(self) -> bool:
        return bool(self.tools)

    def __contains__(self, name: object) -> bool:
        return name in self.tools

    def specs(self) -> list[Mapping[str, Any]]:
        """Return the ``tools`` parameter of a chat completion, built once: don't mutate it."""
        # A JSON schema costs ~2 ms to generate: every job shares one copy.
        if self._specs is None:
            self._specs = [tool.spec() for tool in self.tools.values()]
        return list(self._specs)

    async def call(self, name: str, arguments: str, ctx: ToolContext) -> str:
        """Run a tool the model called; every failure comes back as text for the model."""
        tool = self.tools.get(name)
        if tool is None:
            known = ", ".join(sorted(self.tools)) or "none"
            return f"error: there is no tool named {name!r} (available: {known})"
        try:
            args = tool.args.model_validate_json(arguments or "{}")
        except ValidationError as exc:
            return f"error: invalid arguments for {name}: {describe(exc)}"
        try:
            result = await tool.run(args, ctx)
        except (AgentError, ValidationError) as exc:
            log.warning("tool failed", tool=name, error=str(exc))
            return f"error: {name} failed: {exc}"[:RESULT_CHARS]
        except Exception:
            log.exception("tool failed unexpectedly", tool=name)
            return f"error: {name} failed unexpectedly"
        return result[:RESULT_CHARS]


def describe(exc: ValidationError) -> str:
    """Summarise validation errors as ``field: problem`` pairs."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(part) for part in error["loc"]) or "arguments"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)[:1000]


DEFAULT_TOOLS = ToolRegistry()
tool = DEFAULT_TOOLS.tool


class RecallArgs(BaseModel):
    """Arguments of ``recall_memories``."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(
        default="", max_length=500, description="words the memories should contain; empty for all"
    )


class SearchArgs(BaseModel):
    """Arguments of ``search_history``."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=500, description="text the messages contain")


@tool("recall_memories")
async def recall_memories(args: RecallArgs, ctx: ToolContext) -> str:
    """Recall long-term memories about the user from earlier conversations with you."""
    query = RecallMemories(
        user_id=ctx.user_id, persona=ctx.persona, query=args.query or None, limit=TOOL_HITS
    )
    found = await ctx.lookups.memories.recall(query, ctx.meta)
    if not found:
        return "no memories found"
    return "\n".join(f"- {memory.content}" for memory in found)


@tool("search_history")
async def search_history(args: SearchArgs, ctx: ToolContext) -> str:
    """Search the user's own earlier messages, across all conversations, for a text."""
    query = SearchMessages(user_id=ctx.user_id, query=args.query, limit=TOOL_HITS)
    found = await ctx.lookups.search.search(query, ctx.meta)
    if not found:
        return "no messages found"
    return "\n".join(
        f"- [{m.created_at:%Y-%m-%d %H:%M}] {m.role}: {m.content}" for m in found
    )
