-- 0010: tracing. The trace context (W3C traceparent and tracestate, as propagation headers) of
-- the span that took each event in, so the batch that answers it continues its trace even in
-- another process or after a restart. NULL while tracing is off, and for older events.
ALTER TABLE inbound_events ADD COLUMN trace_context jsonb;
