"""The ``chatbus`` command: run the whole stack on one machine, mint dev tokens."""
