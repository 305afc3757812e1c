"""A Responses API response read from its JSON body: the RunSnapshot and reply the worker needs.

The SDK's `Response` model is built field by field in Python: 0.1 ms of CPU for a response in
progress and 0.5 ms for a settled one with hosted calls, a quarter to a half of the whole poll
(bench/sdk_cost.py), for the dozen fields a snapshot reads. So the backend takes the body as
bytes (`with_raw_response`) and reads those fields here, with the same meaning the model gives
them; tests/test_response_wire.py holds both readings to the same snapshot.

A body that is not what the API documents (not JSON, a field missing or of another type) raises
the worker's ApiError labelled `malformed_response`, as the SDK's own unreadable bodies do
(worker/backends/sdk_errors.py): neither the server's verdict nor a network blip, so not retried
as one. The error names where the body went wrong, never what it held (it may be model output).
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple, TypeVar

from worker.backends.base import ApprovalRequest, RunSnapshot, RunStatus, ToolCall
from worker.errors import ApiError
from worker.events import ReplyMessage, RunError, ToolCallSummary, ToolKind, ToolOutcome, Usage

Json = dict[str, Any]
T = TypeVar("T")

MALFORMED = "malformed_response"

_HOSTED = {
    "file_search_call": ToolKind.FILE_SEARCH,
    "code_interpreter_call": ToolKind.CODE_INTERPRETER,
    "web_search_call": ToolKind.WEB_SEARCH,
    "mcp_call": ToolKind.MCP,
}
_KIND_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "an object"}


class _Item(NamedTuple):
    """One output item, with where it sits in the body for an error to name."""

    where: str
    type: str
    doc: Json


def read_snapshot(body: bytes, poll_after_ms: int | None = None) -> RunSnapshot:
    """The run as this response body shows it (a create's answer or a retrieve's)."""
    response = _decode(body)
    status = _status(response)
    output = _output(response)
    calls = tuple(_tool_call(i) for i in output if i.type == "function_call")
    approvals = tuple(_approval(i) for i in output if i.type == "mcp_approval_request")
    if status is RunStatus.COMPLETED and (calls or approvals):
        status = RunStatus.REQUIRES_ACTION
    asks = status is RunStatus.REQUIRES_ACTION
    settled = status.is_terminal and bool(output)
    return RunSnapshot(
        run_id=_required(response, "id", str, "response"),
        status=status,
        poll_after_ms=poll_after_ms,
        tool_calls=calls if asks else (),
        approvals=approvals if asks else (),
        error=_run_error(response),
        usage=_usage(response),
        messages=_messages(output) if settled else None,
        # A settled response's output items join its conversation under the same IDs.
        last_item_id=_required(output[-1].doc, "id", str, output[-1].where) if settled else None,
        hosted_calls=_hosted_calls(output),
    )


def read_reply_messages(body: bytes) -> tuple[ReplyMessage, ...]:
    """The assistant messages of this response body's output, oldest first."""
    return _messages(_output(_decode(body)))


def read_message(doc: Json) -> ReplyMessage:
    """One message item as JSON (a conversation item's, dumped from the SDK's model), read as a
    response's output message is."""
    return _reply(_Item("item", "message", doc))


def _malformed(where: str, what: str) -> ApiError:
    return ApiError(
        f"the Responses API sent a body the worker cannot read: {where} {what}", MALFORMED
    )


def _decode(body: bytes) -> Json:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:  # ValueError: also bytes that are not UTF-8
        raise _malformed("the body", "is not JSON") from exc
    if not isinstance(doc, dict):
        raise _malformed("the body", "is not a JSON object")
    return doc


def _required(doc: Json, key: str, kind: type[T], where: str) -> T:
    value = doc.get(key)
    if not isinstance(value, kind):
        raise _malformed(f"{where}.{key}", f"is not {_KIND_NAMES[kind]}")
    return value


def _optional(doc: Json, key: str, kind: type[T], where: str) -> T | None:
    """The field's value; None when it is null or left out, as the SDK's model reads both."""
    value = doc.get(key)
    if value is None or isinstance(value, kind):
        return value
    raise _malformed(f"{where}.{key}", f"is not {_KIND_NAMES[kind]} or null")


def _status(response: Json) -> RunStatus:
    value = _optional(response, "status", str, "response") or "queued"
    try:
        return RunStatus(value)
    except ValueError:
        raise _malformed("response.status", "is not a status the worker knows") from None


def _output(response: Json) -> list[_Item]:
    items = []
    for index, doc in enumerate(_required(response, "output", list, "response")):
        where = f"output[{index}]"
        if not isinstance(doc, dict):
            raise _malformed(where, "is not an object")
        items.append(_Item(where, _required(doc, "type", str, where), doc))
    return items


def _tool_call(item: _Item) -> ToolCall:
    doc, where = item.doc, item.where
    return ToolCall(
        _required(doc, "call_id", str, where),
        _required(doc, "name", str, where),
        _required(doc, "arguments", str, where),
    )


def _approval(item: _Item) -> ApprovalRequest:
    doc, where = item.doc, item.where
    return ApprovalRequest(
        _required(doc, "id", str, where),
        _required(doc, "server_label", str, where),
        _required(doc, "name", str, where),
    )


def _run_error(response: Json) -> RunError | None:
    error = _optional(response, "error", dict, "response")
    if error is not None:
        # str(): a null code reads "None", as the model's does.
        code = _optional(error, "code", str, "response.error")
        return RunError(str(code), _required(error, "message", str, "response.error"))
    details = _optional(response, "incomplete_details", dict, "response")
    if details is None:
        return None
    reason = _optional(details, "reason", str, "response.incomplete_details") or "incomplete"
    return RunError(reason, f"the response stopped early: {reason}")


def _usage(response: Json) -> Usage | None:
    usage = _optional(response, "usage", dict, "response")
    if usage is None:
        return None
    where = "response.usage"
    return Usage(
        _required(usage, "input_tokens", int, where),
        _required(usage, "output_tokens", int, where),
        _required(usage, "total_tokens", int, where),
    )


def _messages(output: list[_Item]) -> tuple[ReplyMessage, ...]:
    return tuple(_reply(i) for i in output if i.type == "message")


def _reply(item: _Item) -> ReplyMessage:
    texts: list[str] = []
    annotations: list[Json] = []
    for index, part in enumerate(_required(item.doc, "content", list, item.where)):
        where = f"{item.where}.content[{index}]"
        if not isinstance(part, dict):
            raise _malformed(where, "is not an object")
        kind = part.get("type")
        if kind == "output_text":
            texts.append(_required(part, "text", str, where))
            annotations.extend(_annotations(part, where))
        elif kind == "refusal":
            texts.append(_required(part, "refusal", str, where))
    # What the code interpreter wrote is cited from its container.
    produced = [a["file_id"] for a in annotations if a.get("type") == "container_file_citation"]
    return ReplyMessage(
        _required(item.doc, "id", str, item.where),
        "\n".join(texts),
        tuple(annotations),
        tuple(dict.fromkeys(produced)),
    )


def _annotations(part: Json, where: str) -> list[Json]:
    """The part's annotations as the API sent them (the reply passes them on)."""
    annotations = _required(part, "annotations", list, where)
    for index, annotation in enumerate(annotations):
        at = f"{where}.annotations[{index}]"
        if not isinstance(annotation, dict):
            raise _malformed(at, "is not an object")
        if annotation.get("type") == "container_file_citation":
            _required(annotation, "file_id", str, at)
    return annotations


def _hosted_calls(output: list[_Item]) -> tuple[ToolCallSummary, ...]:
    """The API's own tool calls among the output items, as the reply reports them."""
    calls = []
    for item in output:
        kind = _HOSTED.get(item.type)
        if kind is None:
            continue
        if kind is ToolKind.MCP:
            label = _required(item.doc, "server_label", str, item.where)
            name = f"{label}.{_required(item.doc, 'name', str, item.where)}"
            failed = item.doc.get("error") is not None
        else:
            name, failed = kind.value, item.doc.get("status") == "failed"
        calls.append(ToolCallSummary(kind, name, ToolOutcome.ERROR if failed else ToolOutcome.OK))
    return tuple(calls)
