"""The Files API, for attachments: upload inline content once, describe referenced files.

Like every other method a backend offers, each makes one request (finding an upload may make a
few) and raises the worker's ApiErrors (worker/backends/sdk_errors.py); worker.relay.retry
decides which to try again.
"""

from __future__ import annotations

import openai
from openai.types import FilePurpose

from worker.backends.sdk_errors import sdk_boundary
from worker.relay.attachments import FileKind, ModelFile, kind_of

# Uploads of one conversation are serial and recent: an earlier attempt's is among the newest.
_FIND_WINDOW = 100


class Files:
    """Uploads attachments and finds an upload whose answer was lost."""

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self._files = client.files

    @sdk_boundary
    async def upload(self, filename: str, content: bytes, purpose: FilePurpose) -> ModelFile:
        uploaded = await self._files.create(file=(filename, content), purpose=purpose)
        return ModelFile(uploaded.id, filename, _kind(filename))

    @sdk_boundary
    async def find(self, filename: str, content: bytes, purpose: FilePurpose) -> ModelFile | None:
        """An upload of exactly these bytes under this name, if an earlier attempt made one.

        The Files API takes no idempotency key, so a retried upload looks first: a file of the
        same name and size among the newest is downloaded and compared byte for byte.
        """
        page = await self._files.list(purpose=purpose, order="desc", limit=_FIND_WINDOW)
        for candidate in page.data:
            if candidate.filename != filename or candidate.bytes != len(content):
                continue
            stored = await self._files.content(candidate.id)
            if stored.content == content:
                return ModelFile(candidate.id, filename, _kind(filename))
        return None

    @sdk_boundary
    async def describe(self, file_id: str) -> ModelFile:
        """A referenced file: its name says how the model is shown it. Unknown IDs raise 404."""
        stored = await self._files.retrieve(file_id)
        return ModelFile(stored.id, stored.filename, _kind(stored.filename))

    @sdk_boundary
    async def delete(self, file_id: str) -> None:
        """Deletes an uploaded file; one already gone counts as deleted."""
        try:
            await self._files.delete(file_id)
        except openai.NotFoundError:
            return


def _kind(filename: str) -> FileKind:
    # A referenced file of a type the worker would not upload is still sent as a document:
    # the API decides whether it can read it.
    return kind_of(filename) or FileKind.DOCUMENT
