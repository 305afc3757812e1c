"""What `prune` deletes beyond old rows: the files the worker uploaded for pruned events.

Files go first, so that a prune cut short never leaves a file whose record is gone; an event's
attachment rows go with their files, the event itself with the rows the store's `prune` deletes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from worker.backends.files import Files
from worker.store.ports import RetentionStore


async def prune_files(
    store: RetentionStore,
    files: Files,
    cutoff: datetime,
    *,
    chunk: int,
    on_chunk: Callable[[str, int], None],
) -> int:
    """Deletes, at the API, the uploads of events settled before `cutoff`; returns how many."""
    deleted = 0
    while True:
        batch = await store.prunable_files(cutoff, chunk)
        for file in batch:
            await files.delete(file.file_id)
        await store.forget_files(batch)
        deleted += len(batch)
        on_chunk("files", len(batch))
        if len(batch) < chunk:
            return deleted
