"""What a benchmark reads about its processes from /proc (Linux)."""

import os
from pathlib import Path


def status_kb(pid: int, field: str) -> int:
    """Read one ``kB`` field (VmRSS, VmHWM) of /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    """Return the user + system CPU time a process used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
