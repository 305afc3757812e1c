"""Forged webhook deliveries for the security scenario (e), posted from a process of its own so
that sending them never delays this harness's reply timestamps; its answers come back as JSON.

    python -m bench.forge --url URL --standin CONTROL_URL --count 10000 --rate 500

Each forgery is one of KINDS, in turn. Those that name a response name one the stand-in is
running at that moment (read from its control API), as an attacker who saw a response ID would;
the stale ones are signed with the real secret (BENCH_FORGE_SECRET), as a captured delivery
replayed later would be. A receiver must refuse every one: 401 unsigned or mis-signed, 400 stale
or too large. The process prints `ready` once it can send, then one JSON line when done.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.services import REPO, WebhookTarget, clean_env
from standin.config import new_webhook_secret
from standin.webhooks import signature
from worker.settings import Settings
from worker.webhooks.verify import TOLERANCE_S, WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP

SECRET_VARIABLE = "BENCH_FORGE_SECRET"  # noqa: S105 - the variable's name, not a secret
# Past the receiver's default limit (AW_WEBHOOK_MAX_BODY_BYTES), which the bench does not change.
OVERSIZED_BYTES = int(Settings.model_fields["webhook_max_body_bytes"].default) + 1024
_IN_FLIGHT = 32
_IDS_EVERY_S = 0.5


@dataclass(frozen=True, slots=True)
class Forgery:
    """One forged delivery: its kind, body and headers."""

    kind: str
    body: bytes
    headers: dict[str, str]


def _event(event_type: str, response_id: str, padding: int = 0) -> bytes:
    """A body shaped as OpenAI's (the stand-in's) event for a response that ended."""
    payload: dict[str, Any] = {
        "object": "event",
        "id": f"evt_{secrets.token_hex(12)}",
        "type": event_type,
        "created_at": int(time.time()),
        "data": {"id": response_id},
    }
    if padding:
        payload["padding"] = "x" * padding
    return json.dumps(payload, separators=(",", ":")).encode()


def _signed(body: bytes, secret: str, timestamp: int) -> dict[str, str]:
    webhook_id = f"wh_{secrets.token_hex(12)}"
    return {
        "content-type": "application/json",
        WEBHOOK_ID: webhook_id,
        WEBHOOK_TIMESTAMP: str(timestamp),
        WEBHOOK_SIGNATURE: signature(secret, webhook_id, timestamp, body),
    }


Signed = tuple[bytes, dict[str, str]]


def _wrong_secret(index: int, ids: RunningIds, real_secret: str) -> Signed:
    body = _event("response.completed", made_up_id())
    return body, _signed(body, new_webhook_secret(), int(time.time()))


def _missing_signature(index: int, ids: RunningIds, real_secret: str) -> Signed:
    body = _event("response.completed", ids.pick(index))
    headers = _signed(body, new_webhook_secret(), int(time.time()))
    dropped = _DROPPED[index // len(KINDS) % len(_DROPPED)]
    return body, {name: value for name, value in headers.items() if name not in dropped}


def _stale_timestamp(index: int, ids: RunningIds, real_secret: str) -> Signed:
    body = _event("response.completed", ids.pick(index))
    off = TOLERANCE_S + 1 + index % 3600
    when = int(time.time()) + (off if index // len(KINDS) % 2 else -off)
    return body, _signed(body, real_secret, when)


def _real_id_wrong_key(index: int, ids: RunningIds, real_secret: str) -> Signed:
    body = _event("response.completed", ids.pick(index))
    return body, _signed(body, new_webhook_secret(), int(time.time()))


def _oversized(index: int, ids: RunningIds, real_secret: str) -> Signed:
    body = _event("response.completed", ids.pick(index), padding=OVERSIZED_BYTES)
    return body, _signed(body, new_webhook_secret(), int(time.time()))


def _unknown_type(index: int, ids: RunningIds, real_secret: str) -> Signed:
    body = _event("response.teleported", ids.pick(index))
    return body, _signed(body, new_webhook_secret(), int(time.time()))


# In turn, for missing_signature: no signature, no id, no timestamp, none of the three.
_DROPPED = (
    (WEBHOOK_SIGNATURE,),
    (WEBHOOK_ID,),
    (WEBHOOK_TIMESTAMP,),
    (WEBHOOK_ID, WEBHOOK_TIMESTAMP, WEBHOOK_SIGNATURE),
)


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of forgery: its name, what it is, and how one is made."""

    name: str
    what: str
    make: Callable[[int, RunningIds, str], Signed]


KINDS = (
    Kind("wrong_secret", "a made-up response's ending, signed with another secret", _wrong_secret),
    Kind(
        "missing_signature",
        "no webhook-signature, webhook-id or webhook-timestamp, or none of them",
        _missing_signature,
    ),
    Kind(
        "stale_timestamp",
        "signed with the real secret, timestamp over 5 min off (a replay)",
        _stale_timestamp,
    ),
    Kind(
        "real_id_wrong_key",
        "a running response's ending, correctly shaped, signed with another key",
        _real_id_wrong_key,
    ),
    Kind(
        "oversized", f"a body of {OVERSIZED_BYTES:,} bytes, over the receiver's limit", _oversized
    ),
    Kind(
        "unknown_type_bad_signature",
        "an event type no receiver knows, signed with another key",
        _unknown_type,
    ),
)


def forge(index: int, ids: RunningIds, real_secret: str) -> Forgery:
    """The `index`th forgery, of kind KINDS[index % len(KINDS)]; `real_secret` is the one the
    stand-in signs with."""
    kind = KINDS[index % len(KINDS)]
    body, headers = kind.make(index, ids, real_secret)
    return Forgery(kind.name, body, headers)


def made_up_id() -> str:
    return f"resp_{secrets.token_hex(24)}"


class RunningIds:
    """IDs of the responses the stand-in is running, read every half second."""

    def __init__(self, http: aiohttp.ClientSession, standin_url: str) -> None:
        self._http = http
        self._url = f"{standin_url}/runs"
        self._ids: list[str] = []
        self.used = 0

    async def refresh_forever(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(_IDS_EVERY_S)

    async def refresh(self) -> None:
        async with self._http.get(self._url) as response:
            runs = (await response.json())["runs"]
        running = [r["id"] for r in runs if r["kind"] == "response" and r["ended_at"] is None]
        if running:
            self._ids = running

    def pick(self, index: int) -> str:
        """A running response's ID (the last seen if none runs now); made up before any ran."""
        if not self._ids:
            return made_up_id()
        self.used += 1
        return self._ids[index % len(self._ids)]


async def flood(args: argparse.Namespace, real_secret: str) -> dict[str, Any]:
    """Posts args.count forgeries at args.rate per second; their answers by kind and status."""
    answers: dict[str, Counter[str]] = {kind.name: Counter() for kind in KINDS}
    limit = asyncio.Semaphore(_IN_FLIGHT)
    async with aiohttp.ClientSession() as http, _refreshed(http, args.standin) as ids:
        print("ready", flush=True)
        started = time.monotonic()
        tasks = []
        for index in range(args.count):
            await asyncio.sleep(max(0.0, started + index / args.rate - time.monotonic()))
            await limit.acquire()
            forgery = forge(index, ids, real_secret)
            tasks.append(asyncio.create_task(_post(http, args.url, forgery, limit, answers)))
        await asyncio.gather(*tasks)
        span_s = time.monotonic() - started
    return {
        "sent": args.count,
        "span_s": span_s,
        "real_ids": ids.used,
        "answers": {kind: dict(counts) for kind, counts in answers.items()},
    }


@contextlib.asynccontextmanager
async def _refreshed(http: aiohttp.ClientSession, standin_url: str) -> AsyncIterator[RunningIds]:
    ids = RunningIds(http, standin_url)
    await ids.refresh()
    task = asyncio.create_task(ids.refresh_forever())
    try:
        yield ids
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _post(
    http: aiohttp.ClientSession,
    url: str,
    forgery: Forgery,
    limit: asyncio.Semaphore,
    answers: dict[str, Counter[str]],
) -> None:
    try:
        async with http.post(url, data=forgery.body, headers=forgery.headers) as response:
            status = str(response.status)
    except aiohttp.ClientError:
        status = "no answer"
    finally:
        limit.release()
    answers[forgery.kind][status] += 1


class ForgerProcess:
    """`python -m bench.forge` started for one run: sending once `start` returns."""

    def __init__(self, log_path: Path) -> None:
        self._log_path = log_path
        self._proc: asyncio.subprocess.Process | None = None

    async def start(
        self, receiver: WebhookTarget, standin_url: str, count: int, rate: float
    ) -> None:
        """Starts it against `receiver` (its URL, and its secret for the replays)."""
        argv = ["--url", receiver.url, "--standin", standin_url]
        argv += ["--count", str(count), "--rate", str(rate)]
        with self._log_path.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.forge",
                *argv,
                env={**clean_env(), SECRET_VARIABLE: receiver.secret},
                cwd=REPO,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )
        if await self._line(timeout_s=30) != "ready":
            raise RuntimeError(f"the forger did not start: see {self._log_path}")

    async def result(self, timeout_s: float = 600) -> dict[str, Any]:
        """What it sent and the answers, once it has sent them all."""
        line = await self._line(timeout_s)
        assert self._proc is not None
        await self._proc.wait()
        if not line:
            raise RuntimeError(f"the forger failed: see {self._log_path}")
        result: dict[str, Any] = json.loads(line)
        return result

    async def stop(self) -> None:
        """Kills it if it still runs (the run failed before it was done)."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()

    async def _line(self, timeout_s: float) -> str:
        assert self._proc is not None
        assert self._proc.stdout is not None
        return (await asyncio.wait_for(self._proc.stdout.readline(), timeout_s)).decode().strip()


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.forge", description=__doc__)
    parser.add_argument("--url", required=True, help="the receiver's POST URL")
    parser.add_argument("--standin", required=True, help="the stand-in's /_standin URL")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True, help="forgeries per second")
    return parser.parse_args(argv)


def main() -> int:
    args = _arguments(sys.argv[1:])
    result = asyncio.run(flood(args, os.environ[SECRET_VARIABLE]))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
