"""Attachments: which files the worker sends to the model, and the checks made at intake.

Inline content is decoded and checked before anything of the event is stored, so an attachment
that could never be sent is dead-lettered at once (`attachment_invalid`) instead of failing the
run later. Errors name the attachment's position and sizes, never its name or bytes.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePosixPath

from worker.errors import InvalidEvent, ReasonCode
from worker.events import Attachment, UserMessage


class FileKind(StrEnum):
    """How the model is shown a file: documents are read, images are looked at."""

    DOCUMENT = "document"
    IMAGE = "image"


# What the Responses API reads as `input_file` (text is extracted) or looks at as `input_image`.
DOCUMENT_TYPES = frozenset(
    {
        ".pdf",
        ".txt",
        ".md",
        ".json",
        ".html",
        ".xml",
        ".docx",
        ".pptx",
        ".xlsx",
        ".xls",
        ".csv",
        ".tsv",
    }
)
# Images are checked against their first bytes: a mislabelled file would fail the whole run.
_IMAGE_MAGIC = {
    ".png": (b"\x89PNG\r\n\x1a\n",),
    ".jpg": (b"\xff\xd8\xff",),
    ".jpeg": (b"\xff\xd8\xff",),
    ".gif": (b"GIF87a", b"GIF89a"),
    ".webp": (b"RIFF",),
}
IMAGE_TYPES = frozenset(_IMAGE_MAGIC)


@dataclass(frozen=True, slots=True)
class ModelFile:
    """A file the model is sent by its ID: uploaded from inline content, or referenced."""

    file_id: str
    filename: str
    kind: FileKind


@dataclass(frozen=True, slots=True)
class Limits:
    """The largest inline content, decoded, per file and per event (AW_ATTACHMENT_MAX_BYTES,
    AW_EVENT_ATTACHMENTS_MAX_BYTES): checked at intake, before anything is stored."""

    file_max_bytes: int
    event_max_bytes: int


def kind_of(filename: str) -> FileKind | None:
    """The kind a file name says, or None for a type the worker does not send."""
    suffix = PurePosixPath(filename).suffix.lower()
    if suffix in IMAGE_TYPES:
        return FileKind.IMAGE
    if suffix in DOCUMENT_TYPES:
        return FileKind.DOCUMENT
    return None


def decode(attachment: Attachment) -> bytes:
    """The inline content's bytes (checked at intake, so valid here)."""
    assert attachment.content_base64 is not None
    return base64.b64decode(attachment.content_base64, validate=True)


def check(message: UserMessage, limits: Limits) -> None:
    """Raises InvalidEvent (`attachment_invalid`) for inline content that cannot be sent."""
    total = 0
    for attachment in message.attachments:
        if attachment.inline:
            total += _check_inline(attachment, limits)
    if total > limits.event_max_bytes:
        raise _invalid(
            f"attachments are {_mib(total)} decoded in all, at most {_mib(limits.event_max_bytes)} "
            "per event (at /attachments)"
        )


def _check_inline(attachment: Attachment, limits: Limits) -> int:
    where = f"(at /attachments/{attachment.position})"
    assert attachment.filename is not None
    assert attachment.content_base64 is not None
    suffix = PurePosixPath(attachment.filename).suffix.lower()
    if kind_of(attachment.filename) is None:
        accepted = ", ".join(sorted(DOCUMENT_TYPES | IMAGE_TYPES))
        # A long "extension" may be part of a name, which is the customer's: not shown.
        shown = repr(suffix) if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else "of this file"
        raise _invalid(f"file type {shown} is not accepted; accepted: {accepted} {where}")
    try:
        content = base64.b64decode(attachment.content_base64, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(f"content_base64 is not valid base64 {where}") from None
    if not content:
        raise _invalid(f"the file is empty {where}")
    if len(content) > limits.file_max_bytes:
        raise _invalid(
            f"the file is {_mib(len(content))} decoded, at most {_mib(limits.file_max_bytes)} "
            f"{where}"
        )
    magic = _IMAGE_MAGIC.get(suffix)
    if magic is not None and not content.startswith(magic):
        raise _invalid(f"the content is not a {suffix[1:]} image, as its name says {where}")
    return len(content)


def _invalid(detail: str) -> InvalidEvent:
    return InvalidEvent(ReasonCode.ATTACHMENT_INVALID, detail)


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB" if size >= 1024 * 1024 else f"{size} bytes"
