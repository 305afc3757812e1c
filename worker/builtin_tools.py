"""Tools the package ships, registered in the `assistant_worker.tools` entry-point group like
anyone's (pyproject.toml), so a profile names them the way it names its own."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from worker.toolkit import ToolContext, tool


@tool("current_time", "The current date and time in UTC.", idempotent=True)
async def current_time(_arguments: dict[str, Any], _context: ToolContext) -> str:
    return json.dumps({"utc": datetime.now(UTC).isoformat()})
