"""Answering the API's MCP approval requests by the profile's policy (Responses).

A remote MCP tool the profile lists in `approve` is declared as needing no approval, so the API
runs it at once. Any other tool's approval request is denied: nobody is at hand to approve it
during a run. With `unapproved = "handoff"` the conversation also goes to a human, who can do
what the tool would have done.
"""

from __future__ import annotations

import structlog

from worker.backends.base import ApprovalAnswer, ApprovalRequest
from worker.events import HandoffRequest, ToolCallSummary, ToolKind, ToolOutcome
from worker.profiles.model import McpServer, Unapproved
from worker.relay.tools import TurnTools

log = structlog.get_logger("worker.relay.approvals")


async def answer_approvals(
    requests: tuple[ApprovalRequest, ...], turn: TurnTools
) -> tuple[tuple[ApprovalAnswer, ...], tuple[ToolCallSummary, ...]]:
    """The answers to send, and the denied calls for the reply's tool_calls."""
    answers: list[ApprovalAnswer] = []
    denied: list[ToolCallSummary] = []
    for request in requests:
        server = _server(turn, request.server_label)
        approve = server is not None and request.name in server.approve
        answers.append(ApprovalAnswer(request.request_id, approve))
        if approve:
            continue
        name = f"{request.server_label}.{request.name}"
        log.info("mcp_approval_denied", tool=name)
        denied.append(ToolCallSummary(ToolKind.MCP, name, ToolOutcome.DENIED))
        if server is not None and server.unapproved is Unapproved.HANDOFF:
            await turn.request_handoff(
                HandoffRequest(
                    reason=f"the assistant asked to use the MCP tool {name}, "
                    "which needs a person's approval",
                    summary="",
                )
            )
    return tuple(answers), tuple(denied)


def _server(turn: TurnTools, label: str) -> McpServer | None:
    return next((s for s in turn.profile.hosted.mcp if s.label == label), None)
