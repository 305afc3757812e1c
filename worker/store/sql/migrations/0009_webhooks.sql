-- 0009: webhooks. The receiver records each delivery once (OpenAI retries for up to 72 hours,
-- and duplicates are normal) and each response's ending once, then wakes the workers (NOTIFY
-- aw_response_ended); the owner of the run reads the ending here, so an ending that came
-- before the run's ID was stored is not missed.
CREATE TABLE webhook_deliveries (
    webhook_id  text PRIMARY KEY,
    event_type  text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ended_responses (
    response_id text PRIMARY KEY,
    event_type  text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
