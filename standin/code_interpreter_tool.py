"""The code interpreter (tools of type ``code_interpreter``), as the Responses API runs it.

``[[code_file:NAME]]`` has the model run code that writes the file NAME in its container:
the response shows a ``code_interpreter_call`` (its ``outputs``, the logs, only when
``include`` asks for ``code_interpreter_call.outputs``, as the API does), and the reply
names the file with a ``container_file_citation`` over the name. The file can then be
read from ``/v1/containers/{id}/files/{file_id}`` (standin.containers_api).

A container given by ID is used as is; ``{"type": "auto"}`` reuses the container of the
conversation's latest code interpreter call, else starts a new one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from standin.errors import bad_request, invalid_type, invalid_value, missing_parameter
from standin.models import Json, new_id
from standin.replies import ReplyNote
from standin.response_options import includes

if TYPE_CHECKING:
    from standin.response_models import ResponseRecord

_AUTO = "auto"


@dataclass(frozen=True)
class ContainerFile:
    """A file a code interpreter call wrote, as ``GET /v1/containers/.../files/...`` shows it."""

    id: str
    container_id: str
    filename: str
    created_at: float

    @property
    def content(self) -> bytes:
        return f"{self.filename}, written by the stand-in's code interpreter\n".encode()

    def to_api(self) -> Json:
        return {
            "id": self.id,
            "object": "container.file",
            "container_id": self.container_id,
            "created_at": int(self.created_at),
            "bytes": len(self.content),
            "path": f"/mnt/data/{self.filename}",
            "source": "assistant",
        }


def check_code_interpreter_tool(tool: Json, param: str) -> None:
    container = tool.get("container")
    if container is None:
        raise missing_parameter(f"{param}.container")
    if isinstance(container, str):
        return
    if not isinstance(container, dict):
        raise invalid_type(f"{param}.container", "a string or an object", container)
    if container.get("type") != _AUTO:
        raise invalid_value(container.get("type"), [_AUTO], f"{param}.container.type")


def write_file(
    filename: str, tools: Sequence[Json], history: Sequence[Json], options: Json
) -> tuple[Json, ReplyNote]:
    """The code interpreter call that writes ``filename``, and the reply's note citing it."""
    container_id = _container(_declared(tools), history)
    file_id = new_id("cfile")
    logs = f"wrote /mnt/data/{filename}"
    call = {
        "id": new_id("ci"),
        "type": "code_interpreter_call",
        "code": f"with open('/mnt/data/{filename}', 'w') as out:\n    out.write('...')\n"
        f"print({logs!r})",
        "container_id": container_id,
        "outputs": (
            [{"type": "logs", "logs": logs}]
            if includes(options, "code_interpreter_call.outputs")
            else None
        ),
        "status": "completed",
    }

    def cite(start: int, end: int) -> Json:
        return {
            "type": "container_file_citation",
            "container_id": container_id,
            "file_id": file_id,
            "filename": filename,
            "start_index": start,
            "end_index": end,
        }

    return call, ReplyNote(f"code interpreter wrote {filename}", cited=filename, cites=(cite,))


def container_files(responses: Iterable[ResponseRecord]) -> Iterable[ContainerFile]:
    """The files settled responses' code interpreter calls wrote, found by their citations."""
    for record in responses:
        for item in record.output:
            if item["type"] != "message":
                continue
            for part in item["content"]:
                yield from _cited_files(part.get("annotations") or (), record)


def _cited_files(annotations: Iterable[Json], record: ResponseRecord) -> Iterable[ContainerFile]:
    for annotation in annotations:
        if annotation["type"] == "container_file_citation":
            yield ContainerFile(
                id=annotation["file_id"],
                container_id=annotation["container_id"],
                filename=annotation["filename"],
                created_at=record.ended_at or record.created_at,
            )


def _declared(tools: Sequence[Json]) -> Json:
    for tool in tools:
        if tool["type"] == "code_interpreter":
            return tool
    raise bad_request(
        "The stand-in's [[code_file:...]] marker needs a code_interpreter tool in 'tools'.",
        param="tools",
    )


def _container(tool: Json, history: Sequence[Json]) -> str:
    container: Any = tool["container"]
    if isinstance(container, str):
        return container
    for item in reversed(history):
        if item["type"] == "code_interpreter_call":
            return str(item["container_id"])
    return new_id("cntr")
