"""The memory service: long-term memories of archived sessions.

What it does today: it connects to the bus, answers pings, and consumes
``session.archived`` through a durable JetStream consumer, logging each
archived session it is told about and acknowledging it.

What it does not do yet: it generates no memories and serves no recall. That
work (summarising an archived session with the LLM, storing the memories,
answering recall queries) is planned and not built; nothing here pretends
otherwise. The archived events stay in the ``SESSION_EVENTS`` stream for its
retention period, so a later version can replay them under a new durable
consumer.
"""
