"""The usual single-process chat app, written only as the benchmark's point of comparison.

One FastAPI process does everything: ``POST /chat`` calls the LLM inside the
request and stores both messages; ``GET /history/{session}`` reads them back
from a local SQLite file with the sync driver in a ``def`` endpoint (FastAPI
runs it in its thread pool, the common pattern). Two ways to call the LLM:

- ``async``: an ``async def`` endpoint awaiting ``AsyncOpenAI`` — the event
  loop stays free while the call is in flight;
- ``threads``: a ``def`` endpoint with the sync ``OpenAI`` client — each call
  in flight holds one of the thread pool's workers (40 by default), the same
  pool the history reads need.

Started by bench/isolation.py; install: ``pip install -e .``.
Run alone: ``python bench/baseline.py --mode async --port 8101 --llm-url http://127.0.0.1:8090/v1``
"""

import argparse
import sqlite3
import threading
import uuid
from pathlib import Path

import openai
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel


class ChatIn(BaseModel):
    session: str
    content: str


def build(mode: str, llm_url: str, db_path: Path) -> FastAPI:
    """Build the baseline app in one of its two modes."""
    app = FastAPI()
    lock = threading.Lock()
    with sqlite3.connect(db_path) as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS messages (id TEXT PRIMARY KEY, session TEXT, role TEXT,"
            " content TEXT, created_at REAL DEFAULT (julianday('now')))"
        )
        db.execute("CREATE INDEX IF NOT EXISTS by_session ON messages (session, created_at)")

    def store(session: str, role: str, content: str) -> None:
        with lock, sqlite3.connect(db_path) as db:
            db.execute(
                "INSERT INTO messages (id, session, role, content) VALUES (?, ?, ?, ?)",
                (str(uuid.uuid4()), session, role, content),
            )

    @app.get("/history/{session}")
    def history(session: str) -> list[dict[str, str]]:
        with sqlite3.connect(db_path) as db:
            rows = db.execute(
                "SELECT role, content FROM messages WHERE session = ?"
                " ORDER BY created_at DESC LIMIT 50",
                (session,),
            ).fetchall()
        return [{"role": role, "content": content} for role, content in rows]

    if mode == "async":
        client = openai.AsyncOpenAI(base_url=llm_url, api_key="bench", max_retries=0, timeout=120)

        @app.post("/chat")
        async def chat_async(body: ChatIn) -> dict[str, str]:
            store(body.session, "user", body.content)
            out = await client.chat.completions.create(
                model="sim", messages=[{"role": "user", "content": body.content}]
            )
            reply = out.choices[0].message.content or ""
            store(body.session, "assistant", reply)
            return {"reply": reply}

    else:
        sync_client = openai.OpenAI(base_url=llm_url, api_key="bench", max_retries=0, timeout=120)

        @app.post("/chat")
        def chat_threads(body: ChatIn) -> dict[str, str]:
            store(body.session, "user", body.content)
            out = sync_client.chat.completions.create(
                model="sim", messages=[{"role": "user", "content": body.content}]
            )
            reply = out.choices[0].message.content or ""
            store(body.session, "assistant", reply)
            return {"reply": reply}

    return app


def main() -> None:
    """Serve the baseline app."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["async", "threads"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--llm-url", required=True)
    parser.add_argument("--db", type=Path, required=True)
    args = parser.parse_args()
    app = build(args.mode, args.llm_url, args.db)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", backlog=4096)


if __name__ == "__main__":
    main()
