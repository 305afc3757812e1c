"""Deterministic stand-ins for model output, shared by runs and responses.

Replies name every user text they answer so tests can prove batching, and every
file or image a user message carried so tests can prove the model saw it; token
counts are word counts so usage assertions are exact. After the echo, a reply
reports each tool result in a note of its own (``Echo: a | tool f said: 1``), and a
note may carry a citation whose place in the final text is worked out here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

FAILURE_MESSAGES = {
    "server_error": "The server had an error while processing your request. Sorry about that!",
    "rate_limit_exceeded": "Rate limit reached for requests. Please try again later.",
    "invalid_prompt": "Invalid prompt: your prompt was flagged as potentially violating policy.",
}
_NOTE_SEPARATOR = " | "
_TOKEN = re.compile(r"\S+")

# Builds a citation from the span of the reply text it covers (start, end).
Cite = Callable[[int, int], dict[str, Any]]


def echo_text(user_texts: Sequence[str], tool: tuple[str, str] | None = None) -> str:
    """``Echo: a | b``, plus ``| tool NAME said: OUTPUT`` after a tool round trip."""
    text = "Echo: " + " | ".join(user_texts)
    if tool is not None:
        text += _NOTE_SEPARATOR + tool_said(*tool)
    return text


def tool_said(name: str, output: str) -> str:
    """The note for one function tool's output."""
    return f"tool {name} said: {output}"


def echo_piece(text: str, file_names: Sequence[str]) -> str:
    """One user message as the echo names it: its text, then ``[files: a, b]``
    when it carried files or images, so a test can see what the model was shown."""
    if not file_names:
        return text
    files = f"[files: {', '.join(file_names)}]"
    return f"{text} {files}" if text else files


@dataclass(frozen=True)
class ReplyNote:
    """What a reply says about one tool result; each of ``cites`` makes a citation over
    ``cited`` (a part of ``text``), or over the empty span at the note's end when ``cited``
    is empty."""

    text: str
    cited: str = ""
    cites: tuple[Cite, ...] = ()


@dataclass(frozen=True)
class Reply:
    """A reply's text and its citations, each kept with the offset where its span ends."""

    text: str
    citations: tuple[tuple[int, dict[str, Any]], ...] = ()

    @property
    def annotations(self) -> list[dict[str, Any]]:
        return [citation for _, citation in self.citations]

    def cut(self, length: int) -> Reply:
        """The first ``length`` characters, with the citations that still fit."""
        kept = tuple(citation for citation in self.citations if citation[0] <= length)
        return Reply(self.text[:length], kept)


def compose_reply(opening: str, notes: Sequence[ReplyNote]) -> Reply:
    text = opening
    citations: list[tuple[int, dict[str, Any]]] = []
    for note in notes:
        text += _NOTE_SEPARATOR
        start = len(text) + (note.text.index(note.cited) if note.cited else len(note.text))
        text += note.text
        end = start + len(note.cited)
        citations += [(end, cite(start, end)) for cite in note.cites]
    return Reply(text, tuple(citations))


def partial(text: str) -> str:
    """What an ``incomplete`` outcome leaves behind: the first half of the reply."""
    return text[: max(1, len(text) // 2)]


def count_tokens(*texts: str) -> int:
    return sum(len(text.split()) for text in texts)


def first_tokens(text: str, limit: int) -> str:
    """The start of ``text`` up to its ``limit``-th token (tokens are words, as counted above)."""
    ends = [token.end() for token in _TOKEN.finditer(text)]
    return text if len(ends) <= limit else text[: ends[limit - 1]]
