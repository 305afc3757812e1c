-- 0003: when the customer wrote (the event's occurred_at), so a batch lists messages in the
-- order they were written even when several workers stored them in another order.
ALTER TABLE inbound_events ADD COLUMN occurred_at timestamptz;
