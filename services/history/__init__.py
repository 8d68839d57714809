"""The history service: sessions and messages, served over NATS request-reply.

Rooms: ``config`` (settings), ``models`` (tables), ``db`` (engine and
migrations), ``store`` (queries), ``cursor`` (keyset page tokens), ``cache``
and ``cache_backends`` (versioned cache-aside over Redis or an LRU),
``outbox`` (events written with the change, published by a relay),
``service`` (rules), ``errors`` (domain errors and their one mapping to bus
error codes), ``subscribers`` (bus edges), ``app`` (wiring).
"""
