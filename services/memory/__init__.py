"""The memory service: long-term memories of archived sessions, served over NATS.

What it does:

- **generation** — a durable JetStream pull consumer on ``session.archived``
  reads the whole session from history (request-reply, paged), asks the model
  for short, self-contained facts about the user (one structured-output chat
  completion, ``MemoryExtraction``), stores them with a per-session processed
  record in one transaction, and publishes ``MemoriesStored`` on
  ``memory.stored``. The processed record makes a redelivered event a no-op.
  A failed attempt (history or model unavailable, an answer that is not a
  ``MemoryExtraction``) is retried with a delay and, after
  ``MEMORY_MAX_ATTEMPTS`` deliveries, dead-lettered on ``deadletter.memory``;
- **deletion** — a second durable consumer on ``session.deleted`` removes the
  session's memories and leaves a tombstone, so a late archived event for the
  session stores nothing;
- **recall** — ``memory.recall`` lists a user's memories newest first, by
  persona and by a case-insensitive substring of the content, with keyset
  cursors; ``memory.delete`` deletes one; ``memory.ping`` answers pings.

Rooms: ``config`` (settings), ``models`` (tables), ``db`` (engine and
migrations), ``store`` (queries), ``cursor`` (page tokens), ``llm`` (the model
adapter), ``bus`` (history and event adapters), ``service`` (rules),
``errors`` (domain errors; their one mapping to replies and settlement),
``subscribers`` (bus edges), ``app`` (wiring).
"""
