"""Print a job's events to a terminal as they come: the reply token by token, tools, the end."""

from typing import TextIO

from chatbus_client import (
    CancelledEvent,
    CompletedEvent,
    DeltaEvent,
    FailedEvent,
    JobEvent,
    ReplyText,
    StatusEvent,
    ToolCallEvent,
    ToolResultEvent,
)

RESULT_CHARS = 200


class ReplyPrinter:
    """Write one reply to ``out`` while it streams, then end it with the stored text."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.reply = ReplyText()
        self.shown = ""  # the reply text written so far, to finish it without repeating it
        self.at_line_start = True

    def write(self, text: str) -> None:
        """Write text at once (the terminal shows it token by token)."""
        if text:
            self.out.write(text)
            self.out.flush()
            self.at_line_start = text.endswith("\n")

    def line(self, text: str) -> None:
        """Write a line of its own, below any reply text."""
        self.write(("" if self.at_line_start else "\n") + text + "\n")

    def show(self, event: JobEvent) -> None:
        """Show one event."""
        before = self.reply.attempts
        self.reply.apply(event)
        if isinstance(event, StatusEvent):
            # Another attempt writes its reply from scratch; say so if a reply was showing.
            if before is not None and event.job.attempts != before and self.shown:
                self.line(f"[retrying: attempt {event.job.attempts}]")
                self.shown = ""
        elif isinstance(event, DeltaEvent):
            self.write(event.text)
            self.shown += event.text
        elif isinstance(event, ToolCallEvent):
            self.line(f"  [tool] {event.name}({_text(event.arguments)})")
        elif isinstance(event, ToolResultEvent):
            cut = " (truncated)" if event.truncated else ""
            self.line(f"  [tool] {event.name} -> {_text(event.result)[:RESULT_CHARS]}{cut}")
            self.shown = ""  # the reply goes on below the tool lines
        elif isinstance(event, CompletedEvent):
            self.finish(self.reply.text)
        elif isinstance(event, FailedEvent):
            error = event.job.error
            self.line(f"[failed: {error.message if error else 'no reason given'}]")
        elif isinstance(event, CancelledEvent):
            self.line("[stopped; this partial reply is not kept]")

    def finish(self, final: str) -> None:
        """End the reply with its stored text: the rest of it, or all of it when it differs."""
        if self.shown and final.startswith(self.shown):
            self.write(final[len(self.shown) :])
        else:
            self.write(("" if self.at_line_start else "\n") + final)
        self.write("\n")


def _text(value: object) -> str:
    return value if isinstance(value, str) else repr(value)
