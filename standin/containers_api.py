"""``/v1/containers/{id}/files``: the files code interpreter calls wrote, read back.

Only retrieval: the stand-in's containers exist only as code interpreter calls made them
(standin.code_interpreter_tool), so their files are found through the responses.
"""

from __future__ import annotations

from aiohttp import web

from standin.code_interpreter_tool import ContainerFile, container_files
from standin.errors import not_found
from standin.state import StandInState
from standin.web_util import json_response


class ContainersApi:
    def __init__(self, state: StandInState) -> None:
        self._state = state

    def routes(self) -> list[web.RouteDef]:
        path = "/v1/containers/{container_id}/files/{file_id}"
        return [web.get(path, self.retrieve_file), web.get(f"{path}/content", self.file_content)]

    async def retrieve_file(self, request: web.Request) -> web.Response:
        return json_response(self._file(request).to_api())

    async def file_content(self, request: web.Request) -> web.Response:
        written = self._file(request)
        return web.Response(body=written.content, content_type="application/octet-stream")

    def _file(self, request: web.Request) -> ContainerFile:
        container_id = request.match_info["container_id"]
        file_id = request.match_info["file_id"]
        for written in container_files(self._state.responses.values()):
            if (written.container_id, written.id) == (container_id, file_id):
                return written
        raise not_found("container file", file_id)
