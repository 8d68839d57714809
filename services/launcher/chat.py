"""``chatbus chat``: chat with the stack from a terminal, on the Python client.

Enter sends a line; the reply streams as it is written. Ctrl-C stops the
running reply (the job is cancelled); Ctrl-C when idle, or twice quickly, exits.
"""

import sys
import time
from collections.abc import Callable
from contextlib import closing
from typing import TextIO
from uuid import UUID

from chatbus_client import ChatbusError, Client, Conflict, ConnectionFailed, Job, Session
from services.launcher.chatreply import ReplyPrinter

HELP = """commands:
  /new [persona]   start a session (archives the persona's active one)
  /sessions        list your sessions
  /switch <n|id>   continue session n of /sessions, or the one with that id
  /memories        what the assistant remembers for this session's persona
  /help            this text
  /quit            leave (so do Ctrl-D, and Ctrl-C when no reply is running)
Enter sends; Ctrl-C stops a running reply."""
DOUBLE_PRESS = 1.0  # seconds: a second Ctrl-C this soon after the first one exits


class Quit(Exception):
    """The user asked to leave."""


class ChatApp:
    """The loop of the terminal chat: read a line, run a command or send it, show the reply."""

    def __init__(
        self, client: Client, persona: str, out: TextIO, read: Callable[[str], str] = input
    ) -> None:
        self.client = client
        self.persona = persona
        self.out = out
        self.read = read
        self.session: Session | None = None
        self.listed: list[Session] = []
        self.interrupted_at = 0.0

    def say(self, text: str) -> None:
        """Write a line."""
        self.out.write(text + "\n")
        self.out.flush()

    def run(self) -> int:
        """Chat until the user leaves; return the exit code."""
        try:
            self.start()
        except ChatbusError as exc:
            self.say(f"chatbus chat: {describe(exc, self.client.base_url)}")
            return 1
        while True:
            try:
                line = self.read(self.prompt()).strip()
            except (EOFError, KeyboardInterrupt):
                self.say("")
                return 0
            try:
                if line.startswith("/"):
                    self.command(line)
                elif line:
                    self.send(line)
            except Quit:
                return 0
            except KeyboardInterrupt:  # a second Ctrl-C while stopping a reply
                self.say("")
                return 0
            except ChatbusError as exc:
                self.say(f"error: {describe(exc, self.client.base_url)}")

    def prompt(self) -> str:
        """Return the prompt: the session's persona and short id."""
        if self.session is None:
            return "(no session)> "
        return f"[{self.session.persona} {str(self.session.id)[:8]}]> "

    def start(self) -> None:
        """Continue the newest active session of the persona, or start one."""
        found = self.client.sessions.list(status="active", persona=self.persona, limit=1).items
        self.session = found[0] if found else self.client.sessions.create(self.persona)
        self.say(f"chatbus chat: {self.client.base_url}, session {self.session.id} "
                 f"({self.session.persona}). /help lists the commands.")

    def command(self, line: str) -> None:
        """Run one slash command."""
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in ("/quit", "/exit", "/q"):
            raise Quit
        if name == "/help":
            self.say(HELP)
        elif name == "/new":
            self.session = self.client.sessions.create(arg or self.persona)
            self.say(f"new session {self.session.id} with persona {self.session.persona}")
        elif name == "/sessions":
            self.listed = self.client.sessions.list(limit=20).items
            for n, s in enumerate(self.listed, 1):
                mark = "*" if self.session and s.id == self.session.id else " "
                title = f"  {s.title}" if s.title else ""
                self.say(f"{mark}{n:3}. {str(s.id)[:8]}  {s.persona:12} {s.status:9}"
                         f"{s.message_count:4} messages{title}")
            if not self.listed:
                self.say("no sessions yet: /new starts one")
        elif name == "/switch":
            self.switch(arg)
        elif name == "/memories":
            self.memories()
        else:
            self.say(f"unknown command {name}; /help lists them")

    def switch(self, arg: str) -> None:
        """Continue another session, by its number in /sessions or its (leading part of) id."""
        if arg.isdigit() and 1 <= int(arg) <= len(self.listed):
            session = self.listed[int(arg) - 1]
        else:
            matches = [s for s in self.listed if arg and str(s.id).startswith(arg)]
            if len(matches) == 1:
                session = matches[0]
            else:
                try:
                    session = self.client.sessions.get(UUID(arg))
                except ValueError:
                    self.say("usage: /switch <number of /sessions | session id>")
                    return
        self.session = self.client.sessions.get(session.id)
        self.say(f"session {session.id} ({session.persona}, {session.status})")
        for message in reversed(self.client.messages.list(session.id, limit=6).items):
            who = "you" if message.role == "user" else "assistant"
            self.say(f"  {who}: {message.content}")

    def memories(self) -> None:
        """List the memories of the current session's persona."""
        persona = self.session.persona if self.session else self.persona
        items = self.client.memories.list(persona=persona).items
        for memory in items:
            self.say(f"  - {memory.content}")
        if not items:
            self.say(f"no memories for {persona} yet (they are drawn from archived sessions)")

    def send(self, text: str) -> None:
        """Send a message and stream its reply; Ctrl-C stops the reply."""
        if self.session is None:
            self.say("no session: /new starts one")
            return
        job = self.client.messages.send(self.session.id, text)
        printer = ReplyPrinter(self.out)
        stream = self.client.jobs.stream(job.id)
        try:
            with closing(stream):
                for event in stream:
                    printer.show(event)
        except KeyboardInterrupt:
            self.stop(job, printer)

    def stop(self, job: Job, printer: ReplyPrinter) -> None:
        """Cancel the running reply; a second Ctrl-C soon after the first one exits."""
        now = time.monotonic()
        if now - self.interrupted_at < DOUBLE_PRESS:
            raise KeyboardInterrupt
        self.interrupted_at = now
        try:
            ended = self.client.jobs.cancel(job.id)
        except Conflict:
            printer.line("[it had already ended]")
            return
        printer.line("[stopped]" if ended.status == "cancelled" else f"[{ended.status}]")


def describe(exc: ChatbusError, url: str) -> str:
    """Say what went wrong in one line, with a hint for the errors a user can fix."""
    if isinstance(exc, ConnectionFailed):
        return f"{exc.detail} (is `chatbus up` running at {url}?)"
    if exc.status == 401:
        return f"{exc} (pass --token, or set CHATBUS_TOKEN or the stack's JWT_SECRET)"
    return str(exc)


def run_chat(url: str, token: str, persona: str) -> int:
    """Run the terminal chat against the gateway at ``url``; return the exit code."""
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:  # not on every platform; input() works without it
        pass
    with Client(url, token) as client:
        return ChatApp(client, persona, sys.stdout).run()
