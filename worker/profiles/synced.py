"""What `assistant-worker assistants sync` made at the API, as recorded in synced_objects, and
the profiles the worker runs with once those IDs are filled in."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

import asyncpg

from worker.profiles.load import ProfilesError
from worker.profiles.model import Profile, Profiles
from worker.store.queries import q


class SyncedKind(StrEnum):
    """What a synced_objects row records."""

    ASSISTANT = "assistant"  # key ASSISTANT_KEY: the profile's assistant object
    VECTOR_STORE = "vector_store"  # key KNOWLEDGE_KEY: the store of the profile's knowledge
    KNOWLEDGE_FILE = "knowledge_file"  # key: the document's path; a File, with its content hash


ASSISTANT_KEY = "assistant"
KNOWLEDGE_KEY = "knowledge"
NOT_SYNCED = "not synced yet: run `assistant-worker assistants sync`"


@dataclass(frozen=True, slots=True)
class SyncedObject:
    """One object sync made and recorded."""

    profile: str
    kind: SyncedKind
    key: str
    object_id: str
    content_sha256: str | None = None


SyncedIndex = Mapping[tuple[str, SyncedKind, str], SyncedObject]


class SyncedObjects:
    """The synced_objects table, on a connection the caller owns."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def all(self) -> dict[tuple[str, SyncedKind, str], SyncedObject]:
        rows = await self._conn.fetch(q("synced_objects"))
        found = (
            SyncedObject(
                r["profile"], SyncedKind(r["kind"]), r["key"], r["object_id"], r["content_sha256"]
            )
            for r in rows
        )
        return {(o.profile, o.kind, o.key): o for o in found}

    async def record(self, synced: SyncedObject) -> None:
        await self._conn.execute(
            q("record_synced_object"),
            synced.profile,
            synced.kind.value,
            synced.key,
            synced.object_id,
            synced.content_sha256,
        )

    async def forget(self, profile: str, kind: SyncedKind, key: str) -> None:
        await self._conn.execute(q("forget_synced_object"), profile, kind.value, key)

    async def try_lock(self) -> bool:
        """Whether this session now holds the lock that keeps a second sync from running."""
        return bool(await self._conn.fetchval(q("try_sync_lock")))


async def with_synced_ids(profiles: Profiles, dsn: str) -> Profiles:
    """The profiles with what sync recorded filled in: each knowledge profile's vector store,
    and the assistant of each profile that names none (else AW_ASSISTANT_ID stays the one on
    the Assistants backend, so a missing assistant is not an error). Raises ProfilesError for a
    profile whose knowledge was never synced: its searches would miss every document."""
    if profiles.source is None:  # the AW_MODEL shorthand: nothing of it is synced
        return profiles
    conn = await asyncpg.connect(dsn)
    try:
        synced = await SyncedObjects(conn).all()
    finally:
        await conn.close()
    origin = f"profiles file {profiles.source}"
    filled = {name: _filled(p, synced, origin) for name, p in profiles.profiles.items()}
    return replace(profiles, profiles=filled)


def _filled(profile: Profile, synced: SyncedIndex, origin: str) -> Profile:
    search = profile.hosted.file_search
    if search is not None and search.knowledge:
        store = synced.get((profile.name, SyncedKind.VECTOR_STORE, KNOWLEDGE_KEY))
        if store is None:
            raise ProfilesError(origin, NOT_SYNCED, profile.name, "file_search.knowledge")
        hosted = replace(
            profile.hosted, file_search=replace(search, knowledge_store_id=store.object_id)
        )
        profile = replace(profile, hosted=hosted)
    if profile.assistant_id is None:
        assistant = synced.get((profile.name, SyncedKind.ASSISTANT, ASSISTANT_KEY))
        if assistant is not None:
            profile = replace(profile, assistant_id=assistant.object_id)
    return profile
