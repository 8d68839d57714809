"""The bus contract of chatbus: subject names and every message that crosses NATS.

Every service imports this package; no service imports another service. Each
model carries a ``schema_version`` so a consumer refuses a message it does not
understand instead of misreading it.
"""
