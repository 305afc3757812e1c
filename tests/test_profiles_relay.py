"""Profiles through the relay, on both backends: which profile answers an event (routes, the
conversation's, the event's own), what each profile's run or response is created with, an
unknown profile dead-lettered, and a bad profiles file refusing to start. Real RabbitMQ and
Postgres; the stand-in's records say what reached the API."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from aio_pika.abc import AbstractChannel

from standin import StandIn
from tests.fixtures.relay_tools.api_view import created_with, max_tokens
from tests.fixtures.relay_tools.workers import worker_with_profiles, write_profiles
from tests.harness import REPO
from tests.support import API_KEY, drain, publish, replies_for, until, wait_for_dead_letters
from worker.settings import Settings, Topology

Json = dict[str, Any]

SUPPORT = ("gpt-4o-mini", "You are Acme's helpdesk. Be brief.")
SALES = ("gpt-4.1-mini", "You are Acme's sales desk. Offer the yearly plan.")
PROFILES = f"""
default = "support"

[profiles.support]
model = "{SUPPORT[0]}"
instructions = "{SUPPORT[1]}"

[profiles.sales]
model = "{SALES[0]}"
instructions = "{SALES[1]}"

[[routes]]
profile = "sales"
when = {{ "metadata.inbox" = "sales" }}
"""
# How long the run holding a conversation takes while later events queue up behind it.
HOLD = "[[delay_ms:1000]]"


@pytest.fixture(params=["assistants", "responses"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def answered_by(standin: StandIn, backend: str, reply: Json) -> tuple[str, str]:
    """The model and instructions the reply's run or response was created with."""
    created = created_with(standin, backend, reply["run_id"])
    return created["model"], created["instructions"]


async def ask(channel: AbstractChannel, topology: Topology, **event: Any) -> Json:
    """Publishes one event and waits for its reply, which answers it alone."""
    sent = await publish(channel, topology, **event)
    [reply] = await replies_for(channel, topology, {sent["event_id"]})
    assert reply["in_reply_to"] == [sent["event_id"]]
    assert reply["status"] == "completed"
    return reply


async def test_routes_choose_the_profile_which_then_sticks_to_the_conversation(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    tmp_path: Path,
    backend: str,
) -> None:
    async with worker_with_profiles(settings, tmp_path, PROFILES):
        routed = await ask(
            channel,
            topology,
            conversation_id="c-sales",
            text="prices?",
            metadata={"inbox": "sales"},
        )
        plain = await ask(channel, topology, conversation_id="c-care", text="broken")
        # The metadata chose the profile at first contact; it is not needed again.
        later = await ask(channel, topology, conversation_id="c-sales", text="and discounts?")

    assert answered_by(standin, backend, routed) == SALES
    assert answered_by(standin, backend, plain) == SUPPORT
    assert answered_by(standin, backend, later) == SALES
    assert later["thread_id"] == routed["thread_id"]
    assert routed["backend"] == plain["backend"] == backend


async def test_an_event_naming_a_profile_gets_a_run_of_its_own_and_the_conversation_keeps_its(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    tmp_path: Path,
    backend: str,
) -> None:
    c = "c-named"
    async with worker_with_profiles(settings, tmp_path, PROFILES):
        first = await publish(
            channel, topology, conversation_id=c, text=f"hi {HOLD}", metadata={"inbox": "sales"}
        )
        await until(lambda: len(standin.run_records()) == 1)
        # Both queue behind the first run; only the profile tells them apart.
        plain = await publish(channel, topology, conversation_id=c, text="plain")
        named = await publish(channel, topology, conversation_id=c, text="named", profile="support")
        replies = await replies_for(
            channel, topology, {first["event_id"], plain["event_id"], named["event_id"]}
        )
        after = await ask(channel, topology, conversation_id=c, text="after")
        assert await drain(channel, topology.reply_queue, quiet_s=0.3) == []

    by_event = {tuple(r["in_reply_to"]): r for r in replies}
    assert set(by_event) == {(first["event_id"],), (plain["event_id"],), (named["event_id"],)}
    assert answered_by(standin, backend, by_event[first["event_id"],]) == SALES
    assert answered_by(standin, backend, by_event[plain["event_id"],]) == SALES
    assert answered_by(standin, backend, by_event[named["event_id"],]) == SUPPORT
    assert answered_by(standin, backend, after) == SALES
    assert {r["thread_id"] for r in [*replies, after]} == {after["thread_id"]}
    assert len(standin.run_records()) == 4


async def test_an_event_naming_an_unknown_profile_is_dead_lettered_before_any_api_call(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    tmp_path: Path,
    backend: str,
) -> None:
    async with worker_with_profiles(settings, tmp_path, PROFILES):
        standin.clear_journal()
        event = await publish(
            channel, topology, conversation_id="c-unknown", text="hi", profile="billing"
        )
        [dead] = await wait_for_dead_letters(channel, topology, 1)
        assert standin.journal == []
        # The conversation is not spoiled: without the field the event is answered.
        ok = await ask(channel, topology, conversation_id="c-unknown", text="again")

    assert dead.headers["x-aw-reason"] == "field_unsupported"
    error = str(dead.headers["x-aw-error"])
    assert "/profile" in error
    assert "'billing'" in error
    assert dead.body == json.dumps(event).encode()
    assert answered_by(standin, backend, ok) == SUPPORT


async def test_a_profiles_generation_options_reach_the_api(
    settings: Settings,
    channel: AbstractChannel,
    topology: Topology,
    standin: StandIn,
    tmp_path: Path,
    backend: str,
) -> None:
    toml = PROFILES.replace(
        f'instructions = "{SALES[1]}"',
        f'instructions = "{SALES[1]}"\ntemperature = 0.3\nmax_output_tokens = 400',
    )
    async with worker_with_profiles(settings, tmp_path, toml):
        tuned = await ask(
            channel, topology, conversation_id="c-tuned", text="hi", metadata={"inbox": "sales"}
        )
        untuned = await ask(channel, topology, conversation_id="c-untuned", text="hi")

    assert created_with(standin, backend, tuned["run_id"])["temperature"] == 0.3
    assert max_tokens(standin, backend, tuned["run_id"]) == 400
    # Options are the profile's own: the other's runs leave them to the API.
    assert created_with(standin, backend, untuned["run_id"])["temperature"] == 1.0
    assert max_tokens(standin, backend, untuned["run_id"]) is None


# --- a bad profiles file ---------------------------------------------------------------------

TYPO = PROFILES.replace('model = "gpt-4.1-mini"', 'model = "gpt-4.1-mini"\ntemprature = 0.3')


async def _cli(profiles: Path, *args: str) -> tuple[int, str, str]:
    """`assistant-worker ARGS` with nothing but an API key and the profiles file set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AW_", "OPENAI_"))}
    env |= {"AW_OPENAI_API_KEY": API_KEY, "AW_PROFILES_FILE": str(profiles), "COLUMNS": "200"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        *args,
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_profiles_file_with_a_misspelt_key_refuses_to_start_in_one_line(
    tmp_path: Path,
) -> None:
    path = write_profiles(tmp_path, TYPO)

    code, out, err = await _cli(path, "run")
    assert code == 2
    assert out == ""
    [line] = err.splitlines()
    assert line == (
        f"assistant-worker: profiles file {path}: profile 'sales', key temprature: "
        "unknown key (did you mean 'temperature'?)"
    )

    code, out, err = await _cli(path, "profiles", "check", str(path))
    assert code == 2
    assert out == ""
    assert err.splitlines() == [line.removeprefix("assistant-worker: ")]
