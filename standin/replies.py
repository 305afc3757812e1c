"""Deterministic stand-ins for model output, shared by runs and responses.

Replies name every user text they answer so tests can prove batching, and every
file or image a user message carried so tests can prove the model saw it; token
counts are word counts so usage assertions are exact.
"""

from __future__ import annotations

from collections.abc import Sequence

FAILURE_MESSAGES = {
    "server_error": "The server had an error while processing your request. Sorry about that!",
    "rate_limit_exceeded": "Rate limit reached for requests. Please try again later.",
    "invalid_prompt": "Invalid prompt: your prompt was flagged as potentially violating policy.",
}


def echo_text(user_texts: Sequence[str], tool: tuple[str, str] | None = None) -> str:
    """``Echo: a | b``, plus ``| tool NAME said: OUTPUT`` after a tool round trip."""
    text = "Echo: " + " | ".join(user_texts)
    if tool is not None:
        name, output = tool
        text += f" | tool {name} said: {output}"
    return text


def echo_piece(text: str, file_names: Sequence[str]) -> str:
    """One user message as the echo names it: its text, then ``[files: a, b]``
    when it carried files or images, so a test can see what the model was shown."""
    if not file_names:
        return text
    files = f"[files: {', '.join(file_names)}]"
    return f"{text} {files}" if text else files


def partial(text: str) -> str:
    """What an ``incomplete`` outcome leaves behind: the first half of the reply."""
    return text[: max(1, len(text) // 2)]


def count_tokens(*texts: str) -> int:
    return sum(len(text.split()) for text in texts)


def first_tokens(text: str, limit: int) -> str:
    """What a reply cut off at ``limit`` tokens keeps (tokens are words, as counted above)."""
    return " ".join(text.split()[:limit])
