-- 0002: where each turn starts in its thread, so the Responses backend can find the effects
-- of a create whose answer was lost (the API has no idempotency key and no list of responses).
ALTER TABLE conversations ADD COLUMN last_item_id text;
ALTER TABLE batches ADD COLUMN after_item_id text;
