"""Content parts that can carry files, checked the way the API checks them.

Two families, each from the official spec and the SDK's types:

- Responses input parts (``input_text``, ``input_image``, ``input_file``), in
  ``POST /v1/responses`` input and in conversation items;
- Assistants message parts (``text``, ``image_file``, ``image_url``) and message
  ``attachments``.

A malformed part is a 400 whose ``param`` is the field's full path. Whether the
files a request names exist is a separate check (``StandInState.ensure_files``)
made once the whole request has parsed, because the API lists every missing id
in one error. Parts are stored as sent, in the shape the API returns them.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from standin.errors import (
    bad_request,
    invalid_format,
    invalid_type,
    invalid_value,
    missing_parameter,
    string_too_long,
    unknown_parameter,
)
from standin.models import Json, text_block

# The filename a file id is shown under in echo replies.
FileName = Callable[[str], str]

INPUT_PART_TYPES = ("input_text", "input_image", "input_file")
_INPUT_FILE_PART_TYPES = ("input_image", "input_file")
_MESSAGE_PART_TYPES = ("image_file", "image_url", "text")
_ATTACHMENT_TOOL_TYPES = ("code_interpreter", "file_search")
# ResponseInputImage.detail (ImageDetail) and ResponseInputFile.detail.
_INPUT_IMAGE_DETAILS = ("low", "high", "auto", "original")
_INPUT_FILE_DETAILS = ("auto", "low", "high")
# ImageFile.detail and ImageURL.detail on the Assistants side.
_MESSAGE_IMAGE_DETAILS = ("auto", "low", "high")
_FILE_ID_MAX_CHARS = 64
_CACHE = "prompt_cache_breakpoint"
_INPUT_PART_FIELDS = {
    "input_text": frozenset({"type", "text", _CACHE}),
    "input_image": frozenset({"type", "detail", "file_id", "image_url", _CACHE}),
    "input_file": frozenset(
        {"type", "detail", "file_data", "file_id", "file_url", "filename", _CACHE}
    ),
}
_DATA_URL = re.compile(r"data:[\w.+-]+/[\w.+-]+(?:;[^;,]+)*;base64,(?P<payload>.+)", re.DOTALL)
IMAGE_URL_NAME = "image"


# --- Responses input parts ---------------------------------------------------


def parse_input_part(part: object, param: str) -> Json:
    """One ``input_*`` part of a user, system or developer message."""
    raw = _object(part, param)
    part_type = _required_str(raw, "type", param)
    if part_type not in _INPUT_PART_FIELDS:
        raise invalid_value(part_type, INPUT_PART_TYPES, f"{param}.type")
    _only_fields(raw, _INPUT_PART_FIELDS[part_type], param)
    _cache_breakpoint(raw, param)
    if part_type == "input_text":
        _required_str(raw, "text", param)
        return dict(raw)
    if part_type == "input_image":
        return _input_image(raw, param)
    return _input_file(raw, param)


def _input_image(raw: Json, param: str) -> Json:
    detail = _choice(raw, "detail", _INPUT_IMAGE_DETAILS, param) or "auto"
    file_id = _file_id(raw, param)
    image_url = _optional_str(raw, "image_url", param)
    if image_url is not None and not (_is_web_url(image_url) or _is_data_url(image_url)):
        raise invalid_format(f"{param}.image_url", "a valid URL")
    if file_id is None and image_url is None:
        raise bad_request(
            f"Invalid '{param}': an input_image needs a 'file_id' or an 'image_url'.",
            param=param,
            code="missing_required_parameter",
        )
    # ResponseInputImage: detail is always there, file_id and image_url may be null.
    return {**raw, "detail": detail, "file_id": file_id, "image_url": image_url}


def _input_file(raw: Json, param: str) -> Json:
    _choice(raw, "detail", _INPUT_FILE_DETAILS, param)
    file_id = _file_id(raw, param)
    file_data = _optional_str(raw, "file_data", param)
    file_url = _optional_str(raw, "file_url", param)
    filename = _optional_str(raw, "filename", param)
    if file_data is not None:
        if not _is_data_url(file_data):
            raise invalid_format(
                f"{param}.file_data",
                "a base64-encoded data URL (e.g. 'data:application/pdf;base64,...')",
            )
        if filename is None:
            raise missing_parameter(f"{param}.filename")
    if file_url is not None and not _is_web_url(file_url):
        raise invalid_format(f"{param}.file_url", "a valid URL")
    if file_id is None and file_data is None and file_url is None:
        raise bad_request(
            f"Invalid '{param}': an input_file needs a 'file_id', 'file_data' or 'file_url'.",
            param=param,
            code="missing_required_parameter",
        )
    return dict(raw)


def input_part_file_ids(parts: Iterable[Json]) -> list[str]:
    return [
        part["file_id"]
        for part in parts
        if part.get("type") in _INPUT_FILE_PART_TYPES and isinstance(part.get("file_id"), str)
    ]


def input_part_names(parts: Iterable[Json], file_name: FileName) -> list[str]:
    """What the echo shows for the files and images among a message's parts."""
    names: list[str] = []
    for part in parts:
        if part.get("type") == "input_image":
            names.append(_image_name(part.get("file_id"), file_name))
        elif part.get("type") == "input_file":
            names.append(_input_file_name(part, file_name))
    return names


def _input_file_name(part: Json, file_name: FileName) -> str:
    if part.get("file_id"):
        return file_name(part["file_id"])
    if part.get("filename"):
        return str(part["filename"])
    # A bare file_url: the last segment of its path is the name the file goes by.
    return urlsplit(str(part.get("file_url", ""))).path.rsplit("/", 1)[-1] or "file"


# --- Assistants message parts and attachments --------------------------------


def parse_message_part(part: object, param: str) -> Json:
    """One part of a thread message's ``content`` array."""
    raw = _object(part, param)
    part_type = _required_str(raw, "type", param)
    if part_type == "text":
        _only_fields(raw, frozenset({"type", "text"}), param)
        return text_block(_required_str(raw, "text", param))
    if part_type not in _MESSAGE_PART_TYPES:
        raise invalid_value(part_type, _MESSAGE_PART_TYPES, f"{param}.type")
    _only_fields(raw, frozenset({"type", part_type}), param)
    inner_param = f"{param}.{part_type}"
    inner = _object(raw.get(part_type), inner_param, required=True)
    key = "file_id" if part_type == "image_file" else "url"
    _only_fields(inner, frozenset({key, "detail"}), inner_param)
    value = _required_str(inner, key, inner_param)
    if key == "url" and not _is_web_url(value):
        raise invalid_format(f"{inner_param}.url", "a valid URL")
    _choice(inner, "detail", _MESSAGE_IMAGE_DETAILS, inner_param)
    # ImageFileContentBlock and ImageURLContentBlock: the request's shape is the stored one.
    return {"type": part_type, part_type: dict(inner)}


def parse_attachments(raw: object, param: str = "attachments") -> list[Json]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise invalid_type(param, "an array", raw)
    return [_attachment(item, f"{param}[{index}]") for index, item in enumerate(raw)]


def _attachment(raw: object, param: str) -> Json:
    attachment = _object(raw, param)
    _only_fields(attachment, frozenset({"file_id", "tools"}), param)
    file_id = _required_str(attachment, "file_id", param)
    tools = attachment.get("tools")
    if tools is None:
        raise missing_parameter(f"{param}.tools")
    if not isinstance(tools, list):
        raise invalid_type(f"{param}.tools", "an array", tools)
    parsed = [_attachment_tool(tool, f"{param}.tools[{i}]") for i, tool in enumerate(tools)]
    return {"file_id": file_id, "tools": parsed}


def _attachment_tool(raw: object, param: str) -> Json:
    tool = _object(raw, param)
    _only_fields(tool, frozenset({"type"}), param)
    tool_type = _required_str(tool, "type", param)
    if tool_type not in _ATTACHMENT_TOOL_TYPES:
        raise invalid_value(tool_type, _ATTACHMENT_TOOL_TYPES, f"{param}.type")
    return {"type": tool_type}


def message_file_ids(content: Iterable[Json], attachments: Iterable[Json]) -> list[str]:
    ids = [part["image_file"]["file_id"] for part in content if part["type"] == "image_file"]
    return ids + [attachment["file_id"] for attachment in attachments]


def message_names(
    content: Iterable[Json], attachments: Iterable[Json], file_name: FileName
) -> list[str]:
    """What the echo shows: image parts in order, then the attached files in order."""
    names: list[str] = []
    for part in content:
        if part["type"] == "image_file":
            names.append(file_name(part["image_file"]["file_id"]))
        elif part["type"] == "image_url":
            names.append(IMAGE_URL_NAME)
    return names + [file_name(attachment["file_id"]) for attachment in attachments]


# --- Shared checks -----------------------------------------------------------


def _image_name(file_id: object, file_name: FileName) -> str:
    return file_name(file_id) if isinstance(file_id, str) and file_id else IMAGE_URL_NAME


def _object(value: object, param: str, *, required: bool = False) -> dict[str, Any]:
    if value is None and required:
        raise missing_parameter(param)
    if not isinstance(value, dict):
        raise invalid_type(param, "an object", value)
    return value


def _only_fields(raw: Mapping[str, Any], allowed: frozenset[str], param: str) -> None:
    for key in raw:
        if key not in allowed:
            raise unknown_parameter(f"{param}.{key}")


def _optional_str(raw: Mapping[str, Any], key: str, param: str) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise invalid_type(f"{param}.{key}", "a string", value)
    return value


def _required_str(raw: Mapping[str, Any], key: str, param: str) -> str:
    value = _optional_str(raw, key, param)
    if value is None:
        raise missing_parameter(f"{param}.{key}")
    return value


def _choice(raw: Mapping[str, Any], key: str, allowed: Sequence[str], param: str) -> str | None:
    value = _optional_str(raw, key, param)
    if value is not None and value not in allowed:
        raise invalid_value(value, allowed, f"{param}.{key}")
    return value


def _file_id(raw: Mapping[str, Any], param: str) -> str | None:
    file_id = _optional_str(raw, "file_id", param)
    if file_id is not None and len(file_id) > _FILE_ID_MAX_CHARS:
        raise string_too_long(f"{param}.file_id", _FILE_ID_MAX_CHARS, len(file_id))
    return file_id


def _cache_breakpoint(raw: Mapping[str, Any], param: str) -> None:
    value = raw.get(_CACHE)
    if value is not None and not isinstance(value, dict):
        raise invalid_type(f"{param}.{_CACHE}", "an object", value)


def _is_web_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _is_data_url(value: str) -> bool:
    match = _DATA_URL.fullmatch(value)
    if match is None:
        return False
    try:
        base64.b64decode(match["payload"], validate=True)
    except (binascii.Error, ValueError):
        return False
    return True
