"""The webhook receiver (`assistant-worker webhooks`): OpenAI posts each background response's
ending here; the receiver verifies it, records it once in Postgres and wakes the workers."""
