"""``/_standin/*``: control and inspection endpoints, never subject to faults.

``GET /_standin/faults/kinds`` lists the fault kinds ``POST /_standin/faults`` takes, each
with what it does: request kinds (``status``, ``slow``, ``drop``, ``drop_after``) and webhook
kinds (``webhook_delay``, ``webhook_drop``, ``webhook_duplicate``, ``webhook_reorder``,
``webhook_missign``). ``GET /_standin/webhooks`` shows every webhook try.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from aiohttp import web

from standin.config import StandInConfig
from standin.errors import bad_request
from standin.faults import FAULT_KINDS, FaultRule
from standin.params import read_json
from standin.web_util import json_response


class Controls(Protocol):
    """What the control API needs from the stand-in (``StandIn`` provides it)."""

    @property
    def config(self) -> StandInConfig: ...

    @property
    def journal(self) -> list[dict[str, Any]]: ...

    @property
    def fault_rules(self) -> list[FaultRule]: ...

    def add_faults(self, rules: Iterable[Mapping[str, Any]]) -> None: ...

    def clear_faults(self) -> None: ...

    def clear_journal(self) -> None: ...

    def update_config(self, changes: Mapping[str, Any]) -> StandInConfig: ...

    def reset(self) -> None: ...

    def run_records(self) -> list[dict[str, Any]]: ...

    def webhook_attempts(self) -> list[dict[str, Any]]: ...


class ControlApi:
    def __init__(self, controls: Controls) -> None:
        self._controls = controls

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/_standin/health", self.health),
            web.get("/_standin/faults", self.list_faults),
            web.get("/_standin/faults/kinds", self.fault_kinds),
            web.post("/_standin/faults", self.add_faults),
            web.delete("/_standin/faults", self.clear_faults),
            web.get("/_standin/journal", self.journal),
            web.delete("/_standin/journal", self.clear_journal),
            web.get("/_standin/runs", self.runs),
            web.get("/_standin/webhooks", self.webhooks),
            web.get("/_standin/config", self.config),
            web.post("/_standin/config", self.update_config),
            web.post("/_standin/reset", self.reset),
        ]

    async def health(self, _request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def list_faults(self, _request: web.Request) -> web.Response:
        return json_response({"rules": [rule.to_json() for rule in self._controls.fault_rules]})

    async def fault_kinds(self, _request: web.Request) -> web.Response:
        return json_response({"kinds": FAULT_KINDS})

    async def add_faults(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        rules = body.get("rules")
        if not isinstance(rules, list) or not all(isinstance(rule, dict) for rule in rules):
            raise bad_request("'rules' must be an array of objects.", param="rules")
        try:
            self._controls.add_faults(rules)
        except ValueError as exc:
            raise bad_request(str(exc), param="rules") from None
        return await self.list_faults(request)

    async def clear_faults(self, request: web.Request) -> web.Response:
        self._controls.clear_faults()
        return await self.list_faults(request)

    async def journal(self, _request: web.Request) -> web.Response:
        return json_response({"entries": self._controls.journal})

    async def clear_journal(self, _request: web.Request) -> web.Response:
        self._controls.clear_journal()
        return json_response({"entries": []})

    async def runs(self, _request: web.Request) -> web.Response:
        return json_response({"runs": self._controls.run_records()})

    async def webhooks(self, _request: web.Request) -> web.Response:
        return json_response({"attempts": self._controls.webhook_attempts()})

    async def config(self, _request: web.Request) -> web.Response:
        return json_response(self._controls.config.to_dict())

    async def update_config(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        try:
            config = self._controls.update_config(body)
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        return json_response(config.to_dict())

    async def reset(self, _request: web.Request) -> web.Response:
        self._controls.reset()
        return json_response({"status": "reset"})
