"""`assistant-worker assistants sync`: the API objects the profiles stand for, made to match them.

Each profile's knowledge goes into a vector store of its own, each document uploaded once for
its path and content (the same content under two paths is two Files: a path is what the store
shows a search, and what leaves the folder); on the Assistants backend each profile that names
no assistant gets one.
Sync first observes (what it recorded in synced_objects, and what the API holds under its tags)
and plans, in plain functions of those observations; then it walks the plan, saying each step
and, unless it is a dry run, taking it.

Sync changes only what it made: vector stores and assistants carry the tags `aw_profile` and
`aw_managed`, and each store file it adds carries its document's path and hash as attributes,
so what a sync killed midway made, but did not record, is found and finished by the next one.
The Files API has no metadata: a File uploaded in the instant before its record is written is
the one thing such a kill leaves behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import openai
from openai.types import VectorStore
from openai.types.beta import Assistant

from worker.backends.sdk_errors import sdk_boundary
from worker.errors import ApiError
from worker.profiles.declarations import assistants_tools
from worker.profiles.load import knowledge_files
from worker.profiles.model import Profile, Profiles
from worker.profiles.synced import (
    ASSISTANT_KEY,
    KNOWLEDGE_KEY,
    SyncedIndex,
    SyncedKind,
    SyncedObject,
    SyncedObjects,
)

TAG_PROFILE, TAG_MANAGED, TAG_SPEC = "aw_profile", "aw_managed", "aw_spec"
MANAGED = "true"
ATTRIBUTE_PATH, ATTRIBUTE_SHA256 = "aw_path", "aw_sha256"
# Metadata and attributes: at most 16 pairs, values of at most 512 characters.
MAX_PAIRS, MAX_VALUE_CHARS = 16, 512
# The Assistants API attaches one vector store to an assistant (and one to a thread).
MAX_ASSISTANT_STORES = 1
# A big document takes longer to send than an ordinary request.
UPLOAD_TIMEOUT_S = 300.0
INDEXING_WAIT_S = 300.0
# What the assistant of a dry run would name before its vector store exists.
PLANNED_STORE = "(the new vector store)"
_SPEC_HASH_CHARS = 12


def store_name(profile: str) -> str:
    return f"aw-{profile}-knowledge"


def assistant_name(profile: str) -> str:
    return f"aw-{profile}"


def tags(profile: str) -> dict[str, str]:
    return {TAG_PROFILE: profile, TAG_MANAGED: MANAGED}


def managed_profile(metadata: Mapping[str, object] | None) -> str | None:
    """The profile an object was made for by sync; None for anything sync did not make."""
    if not metadata or metadata.get(TAG_MANAGED) != MANAGED:
        return None
    profile = metadata.get(TAG_PROFILE)
    return profile if isinstance(profile, str) else None


# --- what is observed ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Document:
    """A knowledge document: `key` is its path from the profiles file's folder."""

    key: str
    path: Path
    sha256: str
    size: int


def documents_of(paths: Iterable[Path], folder: Path) -> tuple[Document, ...]:
    """The documents of knowledge paths, hashed; ValueError says which one cannot be synced."""
    return tuple(_document(path, folder) for path in knowledge_files(paths))


def _document(path: Path, folder: Path) -> Document:
    key = Path(os.path.relpath(path, folder)).as_posix()
    if len(key) > MAX_VALUE_CHARS:  # it becomes a store file's attribute
        raise ValueError(f"the path of {path} is longer than {MAX_VALUE_CHARS} characters")
    try:
        with path.open("rb") as file:
            digest = hashlib.file_digest(file, "sha256").hexdigest()
        size = path.stat().st_size
    except OSError as exc:
        raise ValueError(f"cannot read {path} ({exc.strerror or type(exc).__name__})") from None
    return Document(key, path, digest, size)


@dataclass(frozen=True, slots=True)
class StoreFile:
    """A file in a knowledge store; `key` and `sha256` are the attributes sync gave it (None:
    sync did not add it). A file whose indexing failed is not `usable`."""

    file_id: str
    key: str | None
    sha256: str | None
    usable: bool = True


@dataclass(frozen=True, slots=True)
class Observed:
    """What sync found: its records, and its stores and assistants by profile, oldest first."""

    synced: SyncedIndex
    stores: Mapping[str, Sequence[VectorStore]]
    assistants: Mapping[str, Sequence[Assistant]]

    def recorded(self, profile: str, kind: SyncedKind, key: str) -> str | None:
        found = self.synced.get((profile, kind, key))
        return None if found is None else found.object_id

    def knowledge_records(self, profile: str) -> dict[str, SyncedObject]:
        return {
            o.key: o
            for o in self.synced.values()
            if o.profile == profile and o.kind == SyncedKind.KNOWLEDGE_FILE
        }


# --- the plan for a knowledge store's files ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Upload:
    """Upload the document, record it, add it to the store."""

    document: Document
    replaces: bool  # an earlier version was synced

    def describe(self) -> str:
        verb = "replace" if self.replaces else "upload"
        return f"{verb} {self.document.key} ({_size(self.document.size)})"


@dataclass(frozen=True, slots=True)
class Remove:
    """Take a File sync made out of the store (if it is `attached`) and delete it."""

    key: str
    file_id: str
    attached: bool
    superseded: bool  # the document is still there: this is an older version, or a copy

    def describe(self) -> str:
        if not self.attached:
            return f"delete an earlier upload of {self.key} ({self.file_id})"
        what = f"the old version of {self.key}" if self.superseded else self.key
        return f"remove {what} ({self.file_id})"


@dataclass(frozen=True, slots=True)
class Adopt:
    """Record a file found in the store by its attributes (made, but not recorded)."""

    document: Document
    file_id: str

    def describe(self) -> str:
        return f"record {self.document.key} ({self.file_id}, found in the store)"


@dataclass(frozen=True, slots=True)
class Forget:
    """Forget the record of a document that left the folder."""

    key: str


@dataclass(frozen=True, slots=True)
class Unchanged:
    document: Document


KnowledgeStep = Upload | Remove | Adopt | Forget | Unchanged


def plan_knowledge(
    documents: Sequence[Document],
    store_files: Sequence[StoreFile],
    recorded: Mapping[str, SyncedObject],
) -> tuple[KnowledgeStep, ...]:
    """What makes the store hold each document once, in its current version, and nothing else
    sync added; new versions are added before old ones are removed, so searches never miss."""
    attached: dict[str, list[StoreFile]] = defaultdict(list)
    for store_file in store_files:
        if store_file.key is not None:
            attached[store_file.key].append(store_file)
    steps: list[KnowledgeStep] = []
    for document in documents:
        steps += _document_steps(
            document, attached.get(document.key, []), recorded.get(document.key)
        )
    wanted = {document.key for document in documents}
    for key in sorted((attached.keys() | recorded.keys()) - wanted):
        steps += _removal_steps(key, attached.get(key, []), recorded.get(key))
    return tuple(steps)


def _document_steps(
    document: Document, attached: list[StoreFile], record: SyncedObject | None
) -> list[KnowledgeStep]:
    current = [f for f in attached if f.sha256 == document.sha256 and f.usable]
    recorded_id = None if record is None else record.object_id
    kept = next((f for f in current if f.file_id == recorded_id), next(iter(current), None))
    step: KnowledgeStep
    if kept is None:
        step = Upload(document, replaces=bool(attached) or record is not None)
    elif record is None or (record.object_id, record.content_sha256) != (
        kept.file_id,
        document.sha256,
    ):
        step = Adopt(document, kept.file_id)
    else:
        step = Unchanged(document)
    stale = [
        Remove(document.key, f.file_id, attached=True, superseded=True)
        for f in attached
        if f is not kept
    ]
    return [step, *stale, *_earlier_upload(document.key, record, attached, superseded=True)]


def _removal_steps(
    key: str, attached: list[StoreFile], record: SyncedObject | None
) -> list[KnowledgeStep]:
    steps: list[KnowledgeStep] = [
        Remove(key, f.file_id, attached=True, superseded=False) for f in attached
    ]
    steps += _earlier_upload(key, record, attached, superseded=False)
    return steps if record is None else [*steps, Forget(key)]


def _earlier_upload(
    key: str, record: SyncedObject | None, attached: list[StoreFile], *, superseded: bool
) -> list[KnowledgeStep]:
    """The recorded File, when the store does not hold it (a sync stopped before adding it, or
    the store was lost): sync made it, nothing uses it."""
    if record is None or any(f.file_id == record.object_id for f in attached):
        return []
    return [Remove(key, record.object_id, attached=False, superseded=superseded)]


# --- the assistant -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AssistantSpec:
    """The assistant object a profile stands for, in the API's fields."""

    name: str
    model: str
    instructions: str
    tools: list[dict[str, Any]]
    tool_resources: dict[str, Any]
    metadata: dict[str, str]
    temperature: float | None
    reasoning_effort: str | None

    def fields(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "instructions": self.instructions,
            "tools": self.tools,
            "tool_resources": self.tool_resources,
            "metadata": self.metadata,
            "temperature": self.temperature,
            "reasoning_effort": self.reasoning_effort,
        }


def desired_assistant(profile: Profile, store_ids: Sequence[str]) -> AssistantSpec:
    """The API rewrites tools with its own defaults, so what was sent is compared by the hashes
    kept in the `aw_spec` metadata, and the plain fields as they are."""
    tools = assistants_tools(profile)
    resources = {"file_search": {"vector_store_ids": list(store_ids)}}
    g = profile.generation
    options = {"temperature": g.temperature, "reasoning_effort": g.reasoning_effort}
    parts = {"tools": tools, "tool_resources": resources, "options": options}
    spec = ",".join(f"{name}={_hash(value)}" for name, value in parts.items())
    return AssistantSpec(
        name=assistant_name(profile.name),
        model=profile.model,
        instructions=profile.instructions,
        tools=tools,
        tool_resources=resources,
        metadata={**profile.metadata, **tags(profile.name), TAG_SPEC: spec},
        temperature=g.temperature,
        reasoning_effort=g.reasoning_effort,
    )


def assistant_changes(spec: AssistantSpec, existing: Assistant) -> list[str]:
    """The fields in which the assistant differs from the spec ([]: leave it)."""
    plain: dict[str, tuple[object, object]] = {
        "name": (spec.name, existing.name),
        "model": (spec.model, existing.model),
        "instructions": (spec.instructions, existing.instructions),
    }
    if spec.temperature is not None:  # unset, the API shows its default
        plain["temperature"] = (spec.temperature, existing.temperature)
    changed = [name for name, (wanted, found) in plain.items() if wanted != found]
    found_metadata = dict(existing.metadata or {})
    wanted_parts, found_parts = _spec_parts(spec.metadata), _spec_parts(found_metadata)
    changed += [part for part, digest in wanted_parts.items() if found_parts.get(part) != digest]
    if _without_spec(spec.metadata) != _without_spec(found_metadata):
        changed.append("metadata")
    return changed


def assistant_problems(profile: Profile, store_count: int) -> list[str]:
    """Why the profile's assistant cannot be made as the profile says."""
    problems = []
    if store_count > MAX_ASSISTANT_STORES:
        problems.append(
            f"key file_search: the Assistants API attaches at most {MAX_ASSISTANT_STORES} vector "
            f"store to an assistant; this profile has {store_count} (with its knowledge's)"
        )
    room = MAX_PAIRS - len(tags(profile.name)) - 1
    if len(profile.metadata) > room:
        problems.append(
            f"key metadata: {len(profile.metadata)} pairs; an assistant takes {MAX_PAIRS}, "
            f"sync's tags need {MAX_PAIRS - room}, so at most {room} on the Assistants backend"
        )
    return problems


def _hash(value: object) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:_SPEC_HASH_CHARS]


def _spec_parts(metadata: Mapping[str, str]) -> dict[str, str]:
    pairs = (part.partition("=") for part in metadata.get(TAG_SPEC, "").split(",") if part)
    return {name: digest for name, _, digest in pairs}


def _without_spec(metadata: Mapping[str, str]) -> dict[str, str]:
    return {key: value for key, value in metadata.items() if key != TAG_SPEC}


# --- the plan of a profile -----------------------------------------------------------------------


class Identified(Protocol):
    @property
    def id(self) -> str: ...


T = TypeVar("T", bound=Identified)


@dataclass(frozen=True, slots=True)
class Choice(Generic[T]):
    """The object sync will use among those tagged for the profile (None: make one), and
    others tagged for it too (made by two syncs at once), which are left alone."""

    existing: T | None
    recorded: bool
    others: tuple[str, ...] = ()


def choose(tagged: Sequence[T], recorded: str | None) -> Choice[T]:
    """The recorded object if it is still there, else the oldest."""
    if not tagged:
        return Choice(None, recorded=False)
    chosen = next((t for t in tagged if t.id == recorded), tagged[0])
    return Choice(chosen, chosen.id == recorded, tuple(t.id for t in tagged if t is not chosen))


@dataclass(frozen=True, slots=True)
class ProfilePlan:
    """What sync will say and do for one profile. With `problems`, nothing is changed."""

    profile: Profile
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    store: Choice[VectorStore] | None = None  # None: the profile has no knowledge
    knowledge: tuple[KnowledgeStep, ...] = ()
    assistant: Choice[Assistant] | None = None  # None: sync makes no assistant for it

    @property
    def upload_bytes(self) -> int:
        return sum(s.document.size for s in self.knowledge if isinstance(s, Upload))


def profile_notes(profile: Profile, assistants: bool) -> tuple[list[str], list[str]]:
    """What is worth saying of the profile (notes, warnings), whatever its plan."""
    notes, warnings = [], []
    if assistants and profile.assistant_id is not None:
        notes.append(
            f"uses assistant {profile.assistant_id}, named by the profile: sync leaves it as it is"
        )
    missing = list(profile.hosted.beyond_assistants()) if assistants else []
    if missing:
        warnings.append(
            f"the Assistants API has no {' or '.join(missing)} tool: on that backend this "
            "profile answers without it"
        )
    return notes, warnings


def store_warnings(choice: Choice[VectorStore], files: Sequence[StoreFile]) -> list[str]:
    warnings = []
    unmanaged = sum(1 for f in files if f.key is None)
    if unmanaged and choice.existing is not None:
        warnings.append(
            f"{_count(unmanaged, 'file')} in vector store {choice.existing.id} not added by "
            "sync: left as they are"
        )
    if choice.others:
        warnings.append(
            "other vector stores tagged for this profile, left as they are: "
            + ", ".join(choice.others)
        )
    return warnings


def leftovers(profiles: Profiles, observed: Observed) -> dict[str, list[str]]:
    """What sync made for profiles that no longer want it: never deleted, only named."""
    left: dict[str, list[str]] = defaultdict(list)
    for name, stores in observed.stores.items():
        profile = profiles.profiles.get(name)
        search = None if profile is None else profile.hosted.file_search
        if search is None or not search.knowledge:
            left[name] += [f"vector store {s.id}" for s in stores]
    for name, assistants in observed.assistants.items():
        profile = profiles.profiles.get(name)
        if profile is None or profile.assistant_id is not None:
            left[name] += [f"assistant {a.id}" for a in assistants]
    return left


# --- the API -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Indexed:
    """How adding a file to a store ended: completed, failed (with the API's error code)..."""

    status: str
    error: str | None = None


class SyncApi:
    """The Files, Vector Stores and Assistants calls sync makes; each raises the worker's
    ApiError (worker/backends/sdk_errors.py), and what is already gone counts as removed."""

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self._client = client

    @sdk_boundary
    async def managed_stores(self) -> dict[str, list[VectorStore]]:
        found: dict[str, list[VectorStore]] = defaultdict(list)
        async for store in self._client.vector_stores.list(limit=100, order="asc"):
            profile = managed_profile(store.metadata)
            if profile is not None:
                found[profile].append(store)
        return found

    @sdk_boundary
    async def managed_assistants(self) -> dict[str, list[Assistant]]:
        found: dict[str, list[Assistant]] = defaultdict(list)
        with _assistants_sunset():
            listed = self._client.beta.assistants.list(limit=100, order="asc")
        async for assistant in listed:
            profile = managed_profile(assistant.metadata)
            if profile is not None:
                found[profile].append(assistant)
        return found

    @sdk_boundary
    async def store_files(self, store_id: str) -> list[StoreFile]:
        files = self._client.vector_stores.files.list(store_id, limit=100, order="asc")
        return [_store_file(f.id, f.attributes, f.status) async for f in files]

    @sdk_boundary
    async def vector_store_exists(self, store_id: str) -> bool:
        try:
            await self._client.vector_stores.retrieve(store_id)
        except openai.NotFoundError:
            return False
        return True

    @sdk_boundary
    async def assistant_exists(self, assistant_id: str) -> bool:
        with _assistants_sunset():
            retrieved = self._client.beta.assistants.retrieve(assistant_id)
        try:
            await retrieved
        except openai.NotFoundError:
            return False
        return True

    @sdk_boundary
    async def create_store(self, profile: str) -> str:
        store = await self._client.vector_stores.create(
            name=store_name(profile), metadata=tags(profile)
        )
        return store.id

    @sdk_boundary
    async def upload(self, filename: str, content: bytes) -> str:
        uploaded = await self._client.files.create(
            file=(filename, content), purpose="assistants", timeout=UPLOAD_TIMEOUT_S
        )
        return uploaded.id

    @sdk_boundary
    async def attach(self, store_id: str, file_id: str, attributes: dict[str, str]) -> Indexed:
        """Adds the file, and waits while the store indexes it."""
        files = self._client.vector_stores.files
        added = await files.create(store_id, file_id=file_id, attributes=dict(attributes))
        if added.status == "in_progress":
            try:
                added = await files.poll(
                    file_id, vector_store_id=store_id, max_wait_seconds=INDEXING_WAIT_S
                )
            except TimeoutError:
                return Indexed("in_progress")
        return Indexed(added.status, None if added.last_error is None else added.last_error.code)

    @sdk_boundary
    async def detach(self, store_id: str, file_id: str) -> None:
        try:
            await self._client.vector_stores.files.delete(file_id, vector_store_id=store_id)
        except openai.NotFoundError:
            return

    @sdk_boundary
    async def delete_file(self, file_id: str) -> None:
        try:
            await self._client.files.delete(file_id)
        except openai.NotFoundError:
            return

    @sdk_boundary
    async def create_assistant(self, spec: AssistantSpec) -> str:
        # Unset options are left out: the API's defaults stand.
        fields = {k: v for k, v in spec.fields().items() if v is not None}
        with _assistants_sunset():
            created = self._client.beta.assistants.create(**fields)
        return (await created).id

    @sdk_boundary
    async def update_assistant(self, assistant_id: str, spec: AssistantSpec) -> None:
        # Every field, nulls too: an option the profile no longer sets goes back to the default.
        with _assistants_sunset():
            updated = self._client.beta.assistants.update(assistant_id, **spec.fields())
        await updated


@contextmanager
def _assistants_sunset() -> Iterator[None]:
    """The SDK marks the assistants methods deprecated (the API's sunset); this command is for
    the deployments still on it. The mark warns when a method is called, not when awaited."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _store_file(file_id: str, attributes: Mapping[str, object] | None, status: str) -> StoreFile:
    key = (attributes or {}).get(ATTRIBUTE_PATH)
    sha256 = (attributes or {}).get(ATTRIBUTE_SHA256)
    if not isinstance(key, str) or not isinstance(sha256, str):
        return StoreFile(file_id, None, None)
    return StoreFile(file_id, key, sha256, usable=status in ("completed", "in_progress"))


# --- the sync ------------------------------------------------------------------------------------


class Level(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Outcome(StrEnum):
    """What the final summary counts."""

    STORE_CREATED = "vector store created"
    UPLOADED = "uploaded"
    REPLACED = "replaced"
    REMOVED = "removed"
    UNCHANGED = "unchanged"
    ASSISTANT_CREATED = "assistant created"
    ASSISTANT_UPDATED = "assistant updated"
    ERROR = "error"


class SyncListener(Protocol):
    """Hears what sync does, as it does it (the command prints it and shows progress)."""

    def said(self, profile: str, level: Level, text: str) -> None: ...

    def upload_started(self, document: Document) -> None: ...

    def upload_finished(self, document: Document) -> None: ...


class Sync:
    """One sync: observe, plan, then walk the plan, taking each step unless it is a dry run.
    `counts` sums up what was done (or would be)."""

    def __init__(
        self,
        api: SyncApi,
        records: SyncedObjects,
        listener: SyncListener,
        *,
        assistants: bool,
        dry_run: bool,
    ) -> None:
        """`assistants`: make the profiles' assistant objects too (the Assistants backend)."""
        self._api = api
        self._records = records
        self._listener = listener
        self._assistants = assistants
        self._dry_run = dry_run
        self.counts: Counter[Outcome] = Counter()

    async def observe(self) -> Observed:
        stores = await self._api.managed_stores()
        assistants = await self._api.managed_assistants() if self._assistants else {}
        return Observed(await self._records.all(), stores, assistants)

    async def plan(self, profiles: Profiles, observed: Observed) -> list[ProfilePlan]:
        if profiles.source is None:
            raise ValueError("sync takes its profiles from a file")
        folder = profiles.source.parent
        return [await self._plan(p, folder, observed) for p in profiles.profiles.values()]

    async def _plan(self, profile: Profile, folder: Path, observed: Observed) -> ProfilePlan:
        notes, warnings = profile_notes(profile, self._assistants)
        problems = await self._problems(profile)
        if problems:
            return ProfilePlan(profile, tuple(problems), tuple(notes), tuple(warnings))
        store: Choice[VectorStore] | None = None
        knowledge: tuple[KnowledgeStep, ...] = ()
        search = profile.hosted.file_search
        if search is not None and search.knowledge:
            try:
                store, knowledge, more = await self._plan_knowledge(profile, folder, observed)
            except ValueError as exc:
                problem = f"key file_search.knowledge: {exc}"
                return ProfilePlan(profile, (problem,), tuple(notes), tuple(warnings))
            warnings += more
        return ProfilePlan(
            profile,
            notes=tuple(notes),
            warnings=tuple(warnings),
            store=store,
            knowledge=knowledge,
            assistant=self._assistant(profile, observed),
        )

    async def _plan_knowledge(
        self, profile: Profile, folder: Path, observed: Observed
    ) -> tuple[Choice[VectorStore], tuple[KnowledgeStep, ...], list[str]]:
        assert profile.hosted.file_search is not None
        documents = documents_of(profile.hosted.file_search.knowledge, folder)
        recorded = observed.recorded(profile.name, SyncedKind.VECTOR_STORE, KNOWLEDGE_KEY)
        store = choose(observed.stores.get(profile.name, ()), recorded)
        files = [] if store.existing is None else await self._api.store_files(store.existing.id)
        steps = plan_knowledge(documents, files, observed.knowledge_records(profile.name))
        return store, steps, store_warnings(store, files)

    def _assistant(self, profile: Profile, observed: Observed) -> Choice[Assistant] | None:
        if not self._assistants or profile.assistant_id is not None:
            return None
        recorded = observed.recorded(profile.name, SyncedKind.ASSISTANT, ASSISTANT_KEY)
        return choose(observed.assistants.get(profile.name, ()), recorded)

    async def _problems(self, profile: Profile) -> list[str]:
        """What the API lacks that the profile names, and what it cannot hold as written."""
        problems = []
        search = profile.hosted.file_search
        for index, store_id in enumerate(() if search is None else search.vector_store_ids):
            if not await self._api.vector_store_exists(store_id):
                problems.append(
                    f"key file_search.vector_store_ids[{index}]: vector store {store_id} not found"
                )
        if not self._assistants:
            return problems
        if profile.assistant_id is not None:
            if not await self._api.assistant_exists(profile.assistant_id):
                problems.append(f"key assistant_id: assistant {profile.assistant_id} not found")
            return problems
        stores = 0 if search is None else len(search.vector_store_ids) + bool(search.knowledge)
        return problems + assistant_problems(profile, stores)

    # --- walking the plan ------------------------------------------------------------------------

    async def walk(self, plans: Sequence[ProfilePlan], left: Mapping[str, list[str]]) -> None:
        """Says, and unless it is a dry run takes, every step; an API error stops the profile
        it happened in (what was done is recorded), not the others."""
        for plan in plans:
            try:
                await self._walk(plan)
            except (ApiError, OSError) as exc:
                self._error(plan.profile.name, f"{_problem(exc)}; this profile's sync stopped")
        for name, objects in left.items():
            self._say(name, Level.WARNING, f"no longer used, left as it is: {', '.join(objects)}")

    async def _walk(self, plan: ProfilePlan) -> None:
        name = plan.profile.name
        for note in plan.notes:
            self._say(name, Level.INFO, note)
        for warning in plan.warnings:
            self._say(name, Level.WARNING, warning)
        for problem in plan.problems:
            self._error(name, problem)
        if plan.problems:
            return
        store_id = None if plan.store is None else await self._walk_store(name, plan.store)
        for step in plan.knowledge:
            await self._walk_step(name, store_id, step)
        unchanged = sum(1 for step in plan.knowledge if isinstance(step, Unchanged))
        if unchanged:
            self.counts[Outcome.UNCHANGED] += unchanged
            self._say(name, Level.INFO, f"{_count(unchanged, 'document')} unchanged")
        if plan.assistant is not None:
            await self._walk_assistant(plan.profile, plan.assistant, store_id)

    async def _walk_store(self, profile: str, choice: Choice[VectorStore]) -> str | None:
        """The store's ID (None in a dry run that would create it)."""
        if choice.existing is not None:
            if not choice.recorded:
                await self._adopt(
                    profile, SyncedKind.VECTOR_STORE, KNOWLEDGE_KEY, choice.existing.id
                )
            return choice.existing.id
        self._say(profile, Level.INFO, f"create vector store {store_name(profile)}")
        self.counts[Outcome.STORE_CREATED] += 1
        if self._dry_run:
            return None
        store_id = await self._api.create_store(profile)
        await self._record(SyncedObject(profile, SyncedKind.VECTOR_STORE, KNOWLEDGE_KEY, store_id))
        return store_id

    async def _walk_step(self, profile: str, store_id: str | None, step: KnowledgeStep) -> None:
        match step:
            case Upload():
                await self._upload(profile, store_id, step)
            case Remove():
                await self._remove(profile, store_id, step)
            case Adopt(document, file_id):
                self._say(profile, Level.INFO, step.describe())
                await self._record(
                    SyncedObject(
                        profile, SyncedKind.KNOWLEDGE_FILE, document.key, file_id, document.sha256
                    )
                )
            case Forget(key):
                if not self._dry_run:
                    await self._records.forget(profile, SyncedKind.KNOWLEDGE_FILE, key)

    async def _upload(self, profile: str, store_id: str | None, step: Upload) -> None:
        """Uploaded, recorded at once (so a kill before the next step leaves nothing unknown),
        then added to the store with the attributes that find it again."""
        self._say(profile, Level.INFO, step.describe())
        self.counts[Outcome.REPLACED if step.replaces else Outcome.UPLOADED] += 1
        if self._dry_run:
            return
        assert store_id is not None
        document = step.document
        content = document.path.read_bytes()
        # What is uploaded is what is recorded, even if the file changed since it was planned.
        sha256 = hashlib.sha256(content).hexdigest()
        self._listener.upload_started(document)
        file_id = await self._api.upload(document.path.name, content)
        await self._record(
            SyncedObject(profile, SyncedKind.KNOWLEDGE_FILE, document.key, file_id, sha256)
        )
        attributes = {ATTRIBUTE_PATH: document.key, ATTRIBUTE_SHA256: sha256}
        indexed = await self._api.attach(store_id, file_id, attributes)
        self._listener.upload_finished(document)
        if indexed.status == "in_progress":
            self._say(profile, Level.WARNING, f"{document.key} is still being indexed")
        elif indexed.status != "completed":
            reason = indexed.error or indexed.status
            self._error(profile, f"{document.key}: the vector store could not index it ({reason})")

    async def _remove(self, profile: str, store_id: str | None, step: Remove) -> None:
        self._say(profile, Level.INFO, step.describe())
        if not step.superseded:
            self.counts[Outcome.REMOVED] += 1
        if self._dry_run:
            return
        if step.attached:
            assert store_id is not None
            await self._api.detach(store_id, step.file_id)
        await self._api.delete_file(step.file_id)

    async def _walk_assistant(
        self, profile: Profile, choice: Choice[Assistant], store_id: str | None
    ) -> None:
        spec = desired_assistant(profile, _assistant_store_ids(profile, store_id))
        name, existing = profile.name, choice.existing
        if existing is None:
            self._say(name, Level.INFO, f"create assistant {spec.name}")
            self.counts[Outcome.ASSISTANT_CREATED] += 1
            if not self._dry_run:
                assistant_id = await self._api.create_assistant(spec)
                await self._record(
                    SyncedObject(name, SyncedKind.ASSISTANT, ASSISTANT_KEY, assistant_id)
                )
            return
        if not choice.recorded:
            await self._adopt(name, SyncedKind.ASSISTANT, ASSISTANT_KEY, existing.id)
        changes = assistant_changes(spec, existing)
        if not changes:
            self._say(name, Level.INFO, f"assistant {spec.name} ({existing.id}) unchanged")
            return
        self._say(
            name, Level.INFO, f"update assistant {spec.name} ({existing.id}): {', '.join(changes)}"
        )
        self.counts[Outcome.ASSISTANT_UPDATED] += 1
        if not self._dry_run:
            await self._api.update_assistant(existing.id, spec)

    async def _adopt(self, profile: str, kind: SyncedKind, key: str, object_id: str) -> None:
        self._say(
            profile, Level.INFO, f"record {kind.replace('_', ' ')} {object_id} (found by its tags)"
        )
        await self._record(SyncedObject(profile, kind, key, object_id))

    async def _record(self, synced: SyncedObject) -> None:
        if not self._dry_run:
            await self._records.record(synced)

    def _say(self, profile: str, level: Level, text: str) -> None:
        self._listener.said(profile, level, text)

    def _error(self, profile: str, text: str) -> None:
        self.counts[Outcome.ERROR] += 1
        self._say(profile, Level.ERROR, text)


def _assistant_store_ids(profile: Profile, store_id: str | None) -> list[str]:
    search = profile.hosted.file_search
    if search is None:
        return []
    knowledge = [store_id or PLANNED_STORE] if search.knowledge else []
    return [*search.vector_store_ids, *knowledge]


def summary(counts: Counter[Outcome], profiles: int, dry_run: bool) -> str:
    """The last line: what was done (or would be), and how many errors."""
    done = [f"{counts[o]} {o.value}" for o in Outcome if o is not Outcome.ERROR and counts[o]]
    head = (
        f"dry run, nothing changed: {_count(profiles, 'profile')}"
        if dry_run
        else (f"synced {_count(profiles, 'profile')}")
    )
    errors = counts[Outcome.ERROR]
    tail = f"; {_count(errors, 'error')}" if errors else ""
    return f"{head}: {', '.join(done) or 'nothing to do'}{tail}"


def api_problem(exc: ApiError) -> str:
    """The API's own message when it gave one (the SDK's text wraps it in its error's repr)."""
    cause = exc.__cause__
    if isinstance(cause, openai.APIStatusError) and isinstance(cause.body, dict):
        message = cause.body.get("message")
        if isinstance(message, str):
            return f"HTTP {cause.status_code}: {message}"
    return exc.detail


def _problem(exc: ApiError | OSError) -> str:
    if isinstance(exc, ApiError):
        return api_problem(exc)
    return f"cannot read {exc.filename} ({exc.strerror or type(exc).__name__})"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _size(size: int) -> str:
    if size < 1024:
        return _count(size, "byte")
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"
