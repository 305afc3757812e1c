"""What the span of an OpenAI request says, in the GenAI semantic conventions' terms.

Each backend method makes one request (worker/backends/base.py), and `sdk_boundary` gives it a
CLIENT span named `{gen_ai.operation.name} {gen_ai.request.model}`. The requests that make the
model answer are inference operations: `chat` on the Responses API, `invoke_agent` on the
Assistants API (an assistant is an agent there); the others keep the method's name
(`retrieve_run`, `create_thread`, ...). Only names, IDs and counts: never inputs, outputs,
instructions or file names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from worker.backends.base import RunRef, RunSnapshot, ToolSubmission, Turn

PROVIDER = "openai"
_INFERENCE = frozenset({"start_run", "submit_tool_outputs"})
_INFERENCE_OPERATION = {"responses": "chat", "assistants": "invoke_agent"}

Attributes = dict[str, str | int | None]
T = TypeVar("T")


def request(method: str, args: Sequence[object]) -> tuple[str, Attributes]:
    """The span's name and attributes for `method` called with `args` (self first)."""
    backend = getattr(args[0], "name", None) if args else None
    operation = method
    if method in _INFERENCE and isinstance(backend, str):
        operation = _INFERENCE_OPERATION.get(backend, method)
    turn = _find(args, Turn) or _turn_of(_find(args, ToolSubmission))
    model = turn.profile.model if turn is not None else None
    attributes: Attributes = {
        "gen_ai.provider.name": PROVIDER,
        # The attribute's name until semantic conventions 1.37; dashboards still read it.
        "gen_ai.system": PROVIDER,
        "gen_ai.operation.name": operation,
        "gen_ai.request.model": model,
        "gen_ai.conversation.id": _thread_of(args),
        "aw.backend": backend if isinstance(backend, str) else None,
        "aw.api.method": method,
    }
    if backend == "assistants" and turn is not None:
        attributes["gen_ai.agent.id"] = turn.assistant_id
    return (f"{operation} {model}" if model else operation), attributes


def response(result: object) -> Attributes:
    """What an answer adds: the run (response) it is about, its status and token usage."""
    if not isinstance(result, RunSnapshot):
        return {}
    usage = result.usage
    return {
        "gen_ai.response.id": result.run_id,
        "aw.run.status": result.status.value,
        "gen_ai.usage.input_tokens": None if usage is None else usage.prompt_tokens,
        "gen_ai.usage.output_tokens": None if usage is None else usage.completion_tokens,
    }


def _find(args: Sequence[object], kind: type[T]) -> T | None:
    return next((a for a in args if isinstance(a, kind)), None)


def _turn_of(submission: ToolSubmission | None) -> Turn | None:
    return None if submission is None else submission.turn


def _thread_of(args: Sequence[object]) -> str | None:
    # OpenAI's thread (Conversation) ID, where the arguments name it unambiguously.
    ref = _find(args, RunRef)
    if ref is None:
        submission = _find(args, ToolSubmission)
        ref = None if submission is None else submission.run
    return None if ref is None else ref.thread_id
