"""Responses input items, normalised into the conversation items they become.

Items are stored already in their API shape (``ConversationItem``): they are
heterogeneous and the stand-in only ever reads their text, role and call ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from standin.content_parts import input_part_file_ids, parse_input_part
from standin.errors import bad_request, invalid_type
from standin.models import Json, new_id

_MESSAGE_ROLES = frozenset({"user", "assistant", "system", "developer"})
_OUTPUT_PART_TYPES = frozenset({"output_text", "refusal"})


def parse_input(raw: object, param: str = "input") -> list[Json]:
    """``input`` is a plain string (one user message) or a list of items."""
    if isinstance(raw, str):
        return [message_item("user", [{"type": "input_text", "text": raw}])]
    if not isinstance(raw, list):
        raise bad_request(f"'{param}' must be a string or an array.", param=param)
    return [_parse_item(item, f"{param}[{index}]") for index, item in enumerate(raw)]


def message_item(role: str, content: list[Json], status: str = "completed") -> Json:
    return {
        "id": new_id("msg"),
        "type": "message",
        "role": role,
        "status": status,
        "content": content,
    }


def function_call_item(call_id: str, name: str, arguments: str) -> Json:
    return {
        "id": new_id("fc"),
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": "completed",
    }


def _parse_item(item: object, param: str) -> Json:
    if not isinstance(item, dict):
        raise bad_request("Input items must be objects.", param=param)
    item_type = item.get("type", "message")
    if item_type == "message":
        return _parse_message(item, param)
    if item_type == "function_call_output":
        return _parse_call_output(item, param)
    if item_type == "function_call":
        return _parse_call(item, param)
    if item_type == "mcp_approval_response":
        return _parse_approval_response(item, param)
    raise bad_request(f"Input items of type '{item_type}' are not supported.", param=param)


def _parse_message(item: dict[str, Any], param: str) -> Json:
    role = item.get("role")
    if role not in _MESSAGE_ROLES:
        raise bad_request("Unsupported message role.", param=f"{param}.role")
    content = item.get("content")
    if isinstance(content, str):
        # Assistant turns replayed as input are model output, and stored as such.
        part: Json = {"type": "input_text", "text": content}
        if role == "assistant":
            part = {"type": "output_text", "text": content, "annotations": []}
        return message_item(role, [part])
    if not isinstance(content, list) or not content:
        raise bad_request("'content' must be a string or non-empty array.", param=param)
    if role != "assistant":
        parts = [
            parse_input_part(part, f"{param}.content[{index}]")
            for index, part in enumerate(content)
        ]
        return message_item(role, parts)
    for index, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in _OUTPUT_PART_TYPES:
            raise bad_request("Unsupported content part.", param=f"{param}.content[{index}]")
    return message_item(role, list(content))


def _parse_call_output(item: dict[str, Any], param: str) -> Json:
    call_id = item.get("call_id")
    output = item.get("output")
    if not isinstance(call_id, str) or not isinstance(output, str | list):
        raise bad_request("A function_call_output needs 'call_id' and 'output'.", param=param)
    return {
        "id": new_id("fco"),
        "type": "function_call_output",
        "call_id": call_id,
        "output": output,
        "status": "completed",
    }


def _parse_call(item: dict[str, Any], param: str) -> Json:
    call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
    if not (isinstance(call_id, str) and isinstance(name, str) and isinstance(arguments, str)):
        raise bad_request("A function_call needs 'call_id', 'name', 'arguments'.", param=param)
    return function_call_item(call_id, name, arguments)


def _parse_approval_response(item: dict[str, Any], param: str) -> Json:
    request_id, approve, reason = (
        item.get("approval_request_id"),
        item.get("approve"),
        item.get("reason"),
    )
    if not (isinstance(request_id, str) and isinstance(approve, bool)):
        raise bad_request(
            "An mcp_approval_response needs 'approval_request_id' and 'approve'.", param=param
        )
    if reason is not None and not isinstance(reason, str):
        raise invalid_type(f"{param}.reason", "a string", reason)
    return {
        "id": item.get("id") or new_id("mcpa"),
        "type": "mcp_approval_response",
        "approval_request_id": request_id,
        "approve": approve,
        "reason": reason,
    }


def message_text(item: Json) -> str:
    return "\n".join(
        part["text"]
        for part in item["content"]
        if part.get("type") in ("input_text", "output_text")
    )


def output_text(item: Json) -> str:
    """The text a ``function_call_output`` carries, as a string or as input parts."""
    output = item["output"]
    if isinstance(output, str):
        return output
    return "\n".join(part.get("text", "") for part in output if isinstance(part, dict))


def items_file_ids(items: Iterable[Json]) -> list[str]:
    """The uploaded files that input items name, for the existence check."""
    ids: list[str] = []
    for item in items:
        if item["type"] == "message" and item["role"] != "assistant":
            ids += input_part_file_ids(item["content"])
    return ids


def unanswered_user_messages(items: Sequence[Json], new_items: Sequence[Json]) -> list[Json]:
    """User messages after the newest assistant message: what the next reply answers."""
    messages: list[Json] = []
    for item in _newest_first(items, new_items):
        if item["type"] != "message":
            continue
        if item["role"] == "assistant":
            break
        if item["role"] == "user":
            messages.append(item)
    messages.reverse()
    return messages


def newest_user_text(items: Sequence[Json]) -> str | None:
    for item in reversed(items):
        if item["type"] == "message" and item["role"] == "user":
            return message_text(item)
    return None


def _newest_first(items: Sequence[Json], new_items: Sequence[Json]) -> Iterable[Json]:
    yield from reversed(new_items)
    yield from reversed(items)
