"""Migration scripts, oldest first by ``down_revision``."""
