"""AMQP header values as JSON: every value Postgres' jsonb and UTF-8 cannot hold is escaped."""

from __future__ import annotations

import datetime
import decimal
import json

from worker.headers import json_safe, storable


def test_plain_values_pass_unchanged() -> None:
    assert json_safe({"n": 7, "ok": True, "none": None, "s": "café"}) == {
        "n": 7,
        "ok": True,
        "none": None,
        "s": "café",
    }


def test_amqp_types_become_json() -> None:
    when = datetime.datetime(2026, 12, 2, 3, 4, 5, tzinfo=datetime.UTC)
    safe = json_safe([when, decimal.Decimal("1.5"), bytearray(b"abc"), (1, 2)])
    assert safe == ["2026-12-02T03:04:05+00:00", 1.5, "abc", [1, 2]]
    json.dumps(safe)


def test_nul_and_lone_surrogates_are_escaped_in_keys_and_values() -> None:
    safe = json_safe({"k\x00": ["\x00", "a\ud800b"], "bytes": b"\xff\x00"})
    assert safe == {"k\\u0000": ["\\u0000", "a\\ud800b"], "bytes": "\ufffd\\u0000"}
    json.dumps(safe).encode("utf-8")


def test_storable_leaves_ordinary_text_alone() -> None:
    assert storable("evt-1 <x@y> = ü") == "evt-1 <x@y> = ü"
