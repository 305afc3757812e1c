"""``/v1/vector_stores`` and their files.

A vector store here indexes nothing: it lists the Files attached to it, and
``standin.file_search`` reads their text when a tool searches the store. Request
bodies are checked against the reference (``CreateVectorStoreRequest`` and its
kin have ``additionalProperties: false``), so a client bug is a 400 here as there.
"""

from __future__ import annotations

import copy
import time
from typing import Any, TypeGuard

from aiohttp import web

from standin.assistants_api import only_fields
from standin.errors import bad_request, invalid_type, invalid_value, missing_parameter, not_found
from standin.file_search import document_text
from standin.models import AUTO_CHUNKING, Attributes, Json, VectorStore, VectorStoreFile, new_id
from standin.pagination import PageQuery, list_body, paginate
from standin.params import metadata, opt_list, opt_str, read_json, req_str
from standin.state import StandInState
from standin.web_util import json_response

_CREATE_FIELDS = frozenset(
    {"name", "description", "file_ids", "expires_after", "chunking_strategy", "metadata"}
)
_MODIFY_FIELDS = frozenset({"name", "expires_after", "metadata"})
_ATTACH_FIELDS = frozenset({"file_id", "attributes", "chunking_strategy"})
_FILE_STATUSES = ("in_progress", "completed", "failed", "cancelled")
_MAX_FILE_IDS = 500
_MAX_ATTRIBUTES = 16
_MAX_ATTRIBUTE_KEY_CHARS = 64
_MAX_ATTRIBUTE_VALUE_CHARS = 512
_MIN_CHUNK_TOKENS, _MAX_CHUNK_TOKENS = 100, 4096
_MAX_EXPIRY_DAYS = 365


class VectorStoresApi:
    def __init__(self, state: StandInState) -> None:
        self._state = state

    def routes(self) -> list[web.RouteDef]:
        store = "/v1/vector_stores/{vector_store_id}"
        attached = f"{store}/files/{{file_id}}"
        return [
            web.post("/v1/vector_stores", self.create),
            web.get("/v1/vector_stores", self.list_stores),
            web.get(store, self.retrieve),
            web.post(store, self.modify),
            web.delete(store, self.delete),
            web.post(f"{store}/files", self.attach_file),
            web.get(f"{store}/files", self.list_files),
            web.get(attached, self.retrieve_file),
            web.post(attached, self.update_file),
            web.delete(attached, self.detach_file),
            web.get(f"{attached}/content", self.file_content),
        ]

    def _store(self, request: web.Request) -> VectorStore:
        return self._state.vector_store(request.match_info["vector_store_id"])

    def _attached(self, request: web.Request) -> VectorStoreFile:
        store = self._store(request)
        file_id = request.match_info["file_id"]
        attached = store.files.get(file_id)
        if attached is None:
            raise not_found("vector store file", file_id)
        return attached

    async def create(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        only_fields(body, _CREATE_FIELDS)
        file_ids = _file_ids(body)
        chunking = parse_chunking_strategy(body.get("chunking_strategy"), "chunking_strategy")
        store = VectorStore(
            id=new_id("vs"),
            name=opt_str(body, "name") or "",
            created_at=time.time(),
            description=opt_str(body, "description"),
            metadata=metadata(body),
            expires_after=parse_expires_after(body.get("expires_after")),
        )
        self._state.ensure_files(file_ids)
        for file_id in dict.fromkeys(file_ids):
            self._attach(store, file_id, chunking, attributes=None)
        self._state.vector_stores[store.id] = store
        return json_response(store.to_api())

    async def list_stores(self, request: web.Request) -> web.Response:
        query = PageQuery.parse(request.query)
        page, has_more = paginate(list(self._state.vector_stores.values()), _store_id, query)
        return json_response(list_body([store.to_api() for store in page], has_more))

    async def retrieve(self, request: web.Request) -> web.Response:
        return json_response(self._store(request).to_api())

    async def modify(self, request: web.Request) -> web.Response:
        """Only what the body names changes; a null ``expires_after`` removes the policy."""
        body = await read_json(request)
        only_fields(body, _MODIFY_FIELDS)
        name = opt_str(body, "name")
        new_metadata = None if body.get("metadata") is None else metadata(body)
        expires_after = parse_expires_after(body.get("expires_after"))
        store = self._store(request)
        if name is not None:
            store.name = name
        if new_metadata is not None:
            store.metadata = new_metadata
        if "expires_after" in body:
            store.expires_after = expires_after
        return json_response(store.to_api())

    async def delete(self, request: web.Request) -> web.Response:
        store = self._store(request)
        del self._state.vector_stores[store.id]
        return json_response({"id": store.id, "object": "vector_store.deleted", "deleted": True})

    async def attach_file(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        only_fields(body, _ATTACH_FIELDS)
        file_id = req_str(body, "file_id")
        attributes = parse_attributes(body.get("attributes"))
        chunking = parse_chunking_strategy(body.get("chunking_strategy"), "chunking_strategy")
        store = self._store(request)
        self._state.ensure_files([file_id])
        return json_response(self._attach(store, file_id, chunking, attributes).to_api())

    def _attach(
        self,
        store: VectorStore,
        file_id: str,
        chunking: Json,
        attributes: Attributes | None,
    ) -> VectorStoreFile:
        # Attaching a file again replaces the earlier attachment, newest last.
        store.files.pop(file_id, None)
        attached = VectorStoreFile(
            file_id=file_id,
            vector_store_id=store.id,
            created_at=time.time(),
            usage_bytes=len(self._state.files[file_id].content),
            chunking_strategy=chunking,
            attributes=attributes,
        )
        store.files[file_id] = attached
        return attached

    async def list_files(self, request: web.Request) -> web.Response:
        query = PageQuery.parse(request.query)
        wanted = request.query.get("filter")
        if wanted is not None and wanted not in _FILE_STATUSES:
            raise invalid_value(wanted, _FILE_STATUSES, "filter")
        files = [
            attached
            for attached in self._store(request).files.values()
            if wanted in (None, attached.status)
        ]
        page, has_more = paginate(files, _file_id, query)
        return json_response(list_body([attached.to_api() for attached in page], has_more))

    async def retrieve_file(self, request: web.Request) -> web.Response:
        return json_response(self._attached(request).to_api())

    async def update_file(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        only_fields(body, frozenset({"attributes"}))
        if "attributes" not in body:
            raise missing_parameter("attributes")
        attributes = parse_attributes(body["attributes"])
        attached = self._attached(request)
        attached.attributes = attributes
        return json_response(attached.to_api())

    async def detach_file(self, request: web.Request) -> web.Response:
        """The File stays in ``/v1/files``; only the store forgets it."""
        attached = self._attached(request)
        del self._state.vector_store(attached.vector_store_id).files[attached.file_id]
        return json_response(
            {"id": attached.file_id, "object": "vector_store.file.deleted", "deleted": True}
        )

    async def file_content(self, request: web.Request) -> web.Response:
        """The parsed text, one page; a file that is not UTF-8 text has none."""
        attached = self._attached(request)
        text = document_text(self._state.files[attached.file_id].content)
        data = [] if text is None else [{"type": "text", "text": text}]
        return json_response(
            {
                "object": "vector_store.file_content.page",
                "data": data,
                "has_more": False,
                "next_page": None,
            }
        )


def _store_id(store: VectorStore) -> str:
    return store.id


def _file_id(attached: VectorStoreFile) -> str:
    return attached.file_id


def _file_ids(body: Json) -> list[str]:
    file_ids = opt_list(body, "file_ids") or []
    if not all(isinstance(file_id, str) for file_id in file_ids):
        raise invalid_type("file_ids", "an array of strings", file_ids)
    if len(file_ids) > _MAX_FILE_IDS:
        raise bad_request(
            f"'file_ids' may hold at most {_MAX_FILE_IDS} IDs, got {len(file_ids)}.",
            param="file_ids",
        )
    return file_ids


def parse_expires_after(raw: object, param: str = "expires_after") -> Json | None:
    """``VectorStoreExpirationAfter``: anchor ``last_active_at``, 1 to 365 days."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise invalid_type(param, "an object", raw)
    only_fields(raw, frozenset({"anchor", "days"}), param)
    anchor = raw.get("anchor")
    if anchor != "last_active_at":
        raise invalid_value(anchor, ["last_active_at"], f"{param}.anchor")
    days = raw.get("days")
    if not _is_int(days) or not 1 <= days <= _MAX_EXPIRY_DAYS:
        raise bad_request(
            f"'{param}.days' must be an integer from 1 to {_MAX_EXPIRY_DAYS}.",
            param=f"{param}.days",
        )
    return {"anchor": anchor, "days": days}


def parse_chunking_strategy(raw: object, param: str) -> Json:
    """The strategy a file is chunked with, in the response's shape (``auto`` spelt out)."""
    if raw is None:
        return copy.deepcopy(AUTO_CHUNKING)
    if not isinstance(raw, dict):
        raise invalid_type(param, "an object", raw)
    kind = raw.get("type")
    if kind == "auto":
        only_fields(raw, frozenset({"type"}), param)
        return copy.deepcopy(AUTO_CHUNKING)
    if kind == "static":
        only_fields(raw, frozenset({"type", "static"}), param)
        return {"type": "static", "static": _static_chunking(raw.get("static"), f"{param}.static")}
    raise invalid_value(kind, ["auto", "static"], f"{param}.type")


def _static_chunking(raw: object, param: str) -> Json:
    if not isinstance(raw, dict):
        raise invalid_type(param, "an object", raw)
    only_fields(raw, frozenset({"max_chunk_size_tokens", "chunk_overlap_tokens"}), param)
    size, overlap = raw.get("max_chunk_size_tokens"), raw.get("chunk_overlap_tokens")
    if not _is_int(size) or not _MIN_CHUNK_TOKENS <= size <= _MAX_CHUNK_TOKENS:
        raise bad_request(
            f"'{param}.max_chunk_size_tokens' must be an integer from "
            f"{_MIN_CHUNK_TOKENS} to {_MAX_CHUNK_TOKENS}.",
            param=f"{param}.max_chunk_size_tokens",
        )
    if not _is_int(overlap) or not 0 <= overlap <= size // 2:
        raise bad_request(
            f"'{param}.chunk_overlap_tokens' must be an integer from 0 to half of "
            "'max_chunk_size_tokens'.",
            param=f"{param}.chunk_overlap_tokens",
        )
    return {"max_chunk_size_tokens": size, "chunk_overlap_tokens": overlap}


def parse_attributes(raw: object, param: str = "attributes") -> Attributes | None:
    """``VectorStoreFileAttributes``: at most 16 pairs of short keys and scalar values."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise invalid_type(param, "an object", raw)
    if len(raw) > _MAX_ATTRIBUTES:
        raise bad_request(f"'{param}' may hold at most {_MAX_ATTRIBUTES} pairs.", param=param)
    for key, value in raw.items():
        if len(key) > _MAX_ATTRIBUTE_KEY_CHARS:
            raise bad_request(
                f"'{param}' keys are limited to {_MAX_ATTRIBUTE_KEY_CHARS} characters.",
                param=param,
            )
        _check_attribute_value(value, f"{param}.{key}")
    return dict(raw)


def _check_attribute_value(value: Any, param: str) -> None:
    if isinstance(value, str):
        if len(value) > _MAX_ATTRIBUTE_VALUE_CHARS:
            raise bad_request(
                f"'{param}' is limited to {_MAX_ATTRIBUTE_VALUE_CHARS} characters.", param=param
            )
    elif not isinstance(value, int | float):
        raise invalid_type(param, "a string, number or boolean", value)


def _is_int(value: object) -> TypeGuard[int]:
    # JSON booleans decode to Python ints; the reference's integers exclude them.
    return isinstance(value, int) and not isinstance(value, bool)
