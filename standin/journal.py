"""Request journal: one entry per ``/v1`` request, for tests and benchmarks.

Entries are plain dicts so the Python API and ``GET /_standin/journal`` hand
out exactly the same data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ID_FIELDS = ("thread_id", "run_id", "response_id", "conversation_id")


class Journal:
    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        # Keeps counting across clears so entries from before and after stay distinct.
        self._seq = 0

    def record(
        self,
        *,
        at: float,
        method: str,
        path: str,
        status: int | None,
        fault: str | None,
        retry_count: int | None,
        ids: Mapping[str, str],
    ) -> None:
        self._seq += 1
        entry: dict[str, Any] = {
            "seq": self._seq,
            "at": at,
            "method": method,
            "path": path,
            "status": status,
            "fault": fault,
            "retry_count": retry_count,
        }
        entry.update({name: ids.get(name) for name in ID_FIELDS})
        self.entries.append(entry)

    def clear(self) -> None:
        self.entries.clear()


def parse_retry_count(header: str | None) -> int | None:
    """The SDK numbers its attempts in ``x-stainless-retry-count``; 0 is the first."""
    if header is None:
        return None
    try:
        return int(header)
    except ValueError:
        return None
