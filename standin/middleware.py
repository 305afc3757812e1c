"""The request pipeline: OpenAI error shapes everywhere, plus fault injection and
the journal for ``/v1`` routes."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from standin.errors import ApiError, default_error_type
from standin.faults import FaultInjector, FaultRule
from standin.journal import ID_FIELDS, Journal, parse_retry_count
from standin.web_util import JOURNAL_IDS, error_response

logger = logging.getLogger(__name__)


def v1_middleware(faults: FaultInjector, journal: Journal) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/v1/"):
            return await _handle(request, handler)
        arrived = time.time()
        request[JOURNAL_IDS] = {}
        rule = faults.pick(request.method, request.path)
        status: int | None = None
        try:
            response = await _respond(request, handler, rule)
            if rule is None or rule.kind != "drop":
                status = response.status
            return response
        finally:
            journal.record(
                at=arrived,
                method=request.method,
                path=request.path,
                status=status,
                fault=rule.kind if rule else None,
                retry_count=parse_retry_count(request.headers.get("x-stainless-retry-count")),
                ids=_ids(request),
            )

    return middleware


async def _respond(
    request: web.Request, handler: Handler, rule: FaultRule | None
) -> web.StreamResponse:
    if rule is not None and rule.kind == "slow":
        await asyncio.sleep(rule.delay_s)
    if rule is not None and rule.kind == "status":
        return error_response(rule.error(), rule.headers())
    if rule is not None and rule.kind == "drop":
        _close_connection(request)
        # Never sent: aiohttp's write fails on the closed transport and is ignored.
        return web.Response(status=499)
    response = await _handle(request, handler)
    if rule is not None and rule.kind == "drop_after":
        _close_connection(request)
    return response


async def _handle(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        # Unknown routes and methods get the OpenAI error shape too.
        message = f"Invalid URL ({request.method} {request.path})"
        return error_response(
            ApiError(exc.status, message, error_type=default_error_type(exc.status))
        )
    except ConnectionResetError:
        # The client went away mid-request (a killed worker): nothing failed here, and
        # nobody is left to read an answer.
        return web.Response(status=499)
    except Exception:
        logger.exception("stand-in handler failed for %s %s", request.method, request.path)
        return error_response(ApiError(500, "The stand-in failed.", error_type="server_error"))


def _close_connection(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


def _ids(request: web.Request) -> dict[str, str]:
    ids = {name: request.match_info[name] for name in ID_FIELDS if name in request.match_info}
    ids.update(request.get(JOURNAL_IDS, {}))
    return ids
