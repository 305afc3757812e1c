"""Where the traced worker's spans go: an OTLP/HTTP endpoint in the bench process, as a collector
would be, counting what it is sent (its own CPU is not the worker's, and is not measured)."""

from __future__ import annotations

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

_PROTOBUF = "application/x-protobuf"


class OtlpSink:
    """Answers POST /v1/traces on 127.0.0.1 like a collector, and counts the spans."""

    def __init__(self) -> None:
        self.spans = 0
        self.requests = 0
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._answer = ExportTraceServiceResponse().SerializeToString()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self, sampled: float) -> dict[str, str]:
        """A traced worker's tracing, by the standard variables alone: `sampled` of the traces
        (1.0: the SDK's default sampler, every span)."""
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
            "OTEL_SERVICE_NAME": "assistant-worker-bench",
        }
        if sampled < 1.0:
            env["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
            env["OTEL_TRACES_SAMPLER_ARG"] = f"{sampled:g}"
        return env

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/v1/traces", self._export)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _export(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest.FromString(await request.read())
        self.requests += 1
        self.spans += sum(len(s.spans) for r in export.resource_spans for s in r.scope_spans)
        return web.Response(body=self._answer, content_type=_PROTOBUF)
