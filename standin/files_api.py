"""``/v1/files``: uploads kept in memory."""

from __future__ import annotations

import time

from aiohttp import web

from standin.errors import bad_request, missing_parameter
from standin.models import StoredFile, new_id
from standin.pagination import PageQuery, list_body, paginate
from standin.state import StandInState
from standin.web_util import json_response

# CreateFileRequest.purpose in the spec (the SDK's FilePurpose). FileObject.purpose
# does not list `evals` yet; the stand-in reports back what was uploaded.
_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
# The real endpoint lists up to 10,000 files per page, newest first, and defaults to
# all of them (spec: limit 1-10,000, default 10,000; order asc|desc, default desc).
_FILES_PAGE_LIMIT = 10_000


class FilesApi:
    def __init__(self, state: StandInState) -> None:
        self._state = state

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/files", self.upload),
            web.get("/v1/files", self.list_files),
            web.get("/v1/files/{file_id}", self.retrieve),
            web.get("/v1/files/{file_id}/content", self.content),
            web.delete("/v1/files/{file_id}", self.delete),
        ]

    async def upload(self, request: web.Request) -> web.Response:
        if not request.content_type.startswith("multipart/"):
            raise bad_request("Uploads must be multipart/form-data.")
        form = await request.post()
        upload = form.get("file")
        purpose = form.get("purpose")
        if not isinstance(upload, web.FileField):
            raise bad_request("Missing required parameter: 'file'.", param="file")
        if not isinstance(purpose, str):
            raise missing_parameter("purpose")
        if purpose not in _PURPOSES:
            raise bad_request(f"'purpose' must be one of {list(_PURPOSES)}.", param="purpose")
        stored = StoredFile(
            id=new_id("file"),
            filename=upload.filename,
            purpose=purpose,
            content=upload.file.read(),
            created_at=time.time(),
        )
        self._state.files[stored.id] = stored
        return json_response(stored.to_api())

    async def list_files(self, request: web.Request) -> web.Response:
        query = PageQuery.parse(
            request.query, default_limit=_FILES_PAGE_LIMIT, max_limit=_FILES_PAGE_LIMIT
        )
        purpose = request.query.get("purpose")
        files = [
            stored
            for stored in self._state.files.values()
            if not stored.deleted and purpose in (None, stored.purpose)
        ]
        page, has_more = paginate(files, lambda stored: stored.id, query)
        return json_response(list_body([stored.to_api() for stored in page], has_more))

    async def retrieve(self, request: web.Request) -> web.Response:
        return json_response(self._state.file(request.match_info["file_id"]).to_api())

    async def content(self, request: web.Request) -> web.Response:
        stored = self._state.file(request.match_info["file_id"])
        return web.Response(body=stored.content, content_type="application/octet-stream")

    async def delete(self, request: web.Request) -> web.Response:
        stored = self._state.file(request.match_info["file_id"])
        stored.deleted = True
        self._state.detach_file(stored.id)
        return json_response({"id": stored.id, "object": "file", "deleted": True})
