"""Benchmarks: the relay's cost and speed, side by side with a straightforward worker.

`make bench` (or `python -m bench`) runs every scenario against the real RabbitMQ and Postgres
and an OpenAI stand-in process, for the worker and for the baseline in `bench/baseline.py`,
and writes `bench/RESULTS.md`. Nothing here asserts timings: it measures and reports.
"""
