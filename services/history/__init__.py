"""The history service: sessions and messages, served over NATS request-reply.

Rooms: ``config`` (settings), ``models`` (tables), ``db`` (engine and
migrations), ``store`` (queries), ``cursor`` (keyset page tokens), ``service``
(rules), ``errors`` (domain errors and their one mapping to bus error codes),
``subscribers`` (bus edges), ``app`` (wiring).
"""
