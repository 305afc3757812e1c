-- 0001: conversations, inbound events, batches, runs and the outbox.
CREATE TYPE event_status AS ENUM ('pending', 'batched', 'answered', 'dead_lettered');
CREATE TYPE batch_status AS ENUM ('open', 'finished');
CREATE TYPE outbox_kind AS ENUM ('reply', 'dead_letter');

-- One row per helpdesk conversation: which thread it maps to and which worker owns it now.
CREATE TABLE conversations (
    conversation_id  text PRIMARY KEY,
    backend          text NOT NULL CHECK (backend IN ('assistants', 'responses')),
    thread_id        text,
    assistant_id     text,
    -- A fencing token: every write by the owner names it, so an owner whose lease was taken
    -- over after expiry can no longer change anything.
    lease_token      uuid,
    lease_owner      text,
    lease_expires_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE inbound_events (
    event_id        text PRIMARY KEY,
    seq             bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    conversation_id text NOT NULL REFERENCES conversations,
    status          event_status NOT NULL DEFAULT 'pending',
    batch_id        uuid,
    replay_count    integer NOT NULL DEFAULT 0,
    -- The delivery exactly as received, so a dead letter carries the original bytes.
    body            bytea NOT NULL,
    headers         jsonb NOT NULL DEFAULT '{}',
    routing_key     text NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now(),
    settled_at      timestamptz
);
CREATE INDEX inbound_events_pending_idx ON inbound_events (conversation_id, seq)
    WHERE status = 'pending';

-- The events one run (and its bounded retries) answers together.
CREATE TABLE batches (
    batch_id        uuid PRIMARY KEY,
    conversation_id text NOT NULL REFERENCES conversations,
    event_ids       text[] NOT NULL,
    status          batch_status NOT NULL DEFAULT 'open',
    attempt         integer NOT NULL DEFAULT 1,
    run_id          text,
    messages_added  boolean NOT NULL DEFAULT false,
    first_failure_at timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
CREATE UNIQUE INDEX batches_one_open_per_conversation ON batches (conversation_id)
    WHERE status = 'open';

CREATE TABLE runs (
    run_id     text PRIMARY KEY,
    batch_id   uuid NOT NULL REFERENCES batches,
    attempt    integer NOT NULL,
    status     text NOT NULL,
    polls      integer NOT NULL DEFAULT 0,
    usage      jsonb,
    error      jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    ended_at   timestamptz
);
CREATE INDEX runs_batch_idx ON runs (batch_id);

-- Messages to publish, written in the same transaction as the state change they announce.
CREATE TABLE outbox (
    outbox_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dedupe_key       text NOT NULL UNIQUE,
    kind             outbox_kind NOT NULL,
    message_id       text NOT NULL,
    exchange         text NOT NULL,
    routing_key      text NOT NULL,
    headers          jsonb NOT NULL DEFAULT '{}',
    body             bytea NOT NULL,
    content_type     text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    publish_attempts integer NOT NULL DEFAULT 0,
    published_at     timestamptz
);
CREATE INDEX outbox_unpublished_idx ON outbox (outbox_id) WHERE published_at IS NULL;
