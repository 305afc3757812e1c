-- 0004: lease renewal finds a worker's conversations by token, and the sweeper starts from the
-- work that waits, instead of both reading every conversation ever seen.
CREATE INDEX conversations_leased_idx ON conversations (lease_token)
    WHERE lease_token IS NOT NULL;
