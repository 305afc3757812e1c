-- Canonical schema: what the ordered files in migrations/ add up to.
-- tests/test_migrations.py proves the two agree.

CREATE TYPE event_status AS ENUM ('pending', 'batched', 'answered', 'dead_lettered');
CREATE TYPE batch_status AS ENUM ('open', 'finished');
CREATE TYPE outbox_kind AS ENUM ('reply', 'dead_letter');
CREATE TYPE control_action AS ENUM
    ('takeover', 'release', 'cancel', 'close', 'erase', 'update_metadata');
CREATE TYPE conversation_mode AS ENUM ('assistant', 'human');

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
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- The thread's newest item after the last finished turn (Responses backend).
    last_item_id     text,
    -- Who answers: the assistant, or a human agent who took the conversation over.
    mode             conversation_mode NOT NULL DEFAULT 'assistant',
    -- The sequence of the newest reply written for the conversation (replies count up from 1).
    last_reply_sequence integer NOT NULL DEFAULT 0,
    -- The profile chosen on first contact (NULL: the default, for conversations from before).
    profile          text
);
CREATE INDEX conversations_leased_idx ON conversations (lease_token)
    WHERE lease_token IS NOT NULL;

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
    settled_at      timestamptz,
    -- When the customer wrote, if the helpdesk said; orders a batch.
    occurred_at     timestamptz,
    -- Events coalesce only with neighbours of the same key: what a run applies to all of its
    -- messages (metadata, author, assistant). NULL when the event sets none of them.
    batch_key       text,
    -- A conversation_control.v1 event's action; NULL for a user message.
    control         control_action,
    -- The context of the span that took the event in (traceparent, tracestate); NULL while
    -- tracing is off.
    trace_context   jsonb
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
    finished_at     timestamptz,
    -- Where this turn's items start: the thread's newest item before the current attempt.
    after_item_id   text,
    -- Failures no other class covers; at AW_INTERNAL_ATTEMPTS the batch is dead-lettered.
    failures        integer NOT NULL DEFAULT 0,
    -- The model called handoff_to_human during this batch's run: its reason and summary.
    handoff         jsonb
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

-- Files the model is sent, recorded before the run that sends them is created, so an inline
-- attachment is uploaded once however often its batch is retried or resumed.
CREATE TABLE attachments (
    event_id   text NOT NULL REFERENCES inbound_events ON DELETE CASCADE,
    position   integer NOT NULL,
    file_id    text NOT NULL,
    filename   text NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('document', 'image')),
    -- Uploaded by the worker (inline content): deleted at the API when the event is pruned.
    uploaded   boolean NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, position)
);
CREATE INDEX attachments_uploaded_idx ON attachments (event_id) WHERE uploaded;

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
    published_at     timestamptz,
    -- The conversation a reply, handoff or dead letter is about (erase finds them by it);
    -- NULL where unknown (a dead letter of an event that names no valid conversation).
    conversation_id  text
);
CREATE INDEX outbox_unpublished_idx ON outbox (outbox_id) WHERE published_at IS NULL;
CREATE INDEX outbox_conversation_idx ON outbox (conversation_id)
    WHERE conversation_id IS NOT NULL;

CREATE TYPE tool_call_state AS ENUM ('started', 'ok', 'error', 'unknown');

-- Every function tool call, recorded before its handler runs and again when it has ended, so
-- a worker that resumes the batch tells "never called" from "outcome unknown".
CREATE TABLE tool_calls (
    batch_id        uuid NOT NULL REFERENCES batches ON DELETE CASCADE,
    call_id         text NOT NULL,
    conversation_id text NOT NULL,
    name            text NOT NULL,
    -- The model's arguments and the handler's output: content, forgotten by erase.
    arguments       text NOT NULL,
    state           tool_call_state NOT NULL DEFAULT 'started',
    output          text,
    started_at      timestamptz NOT NULL DEFAULT now(),
    ended_at        timestamptz,
    -- How long the handler took, as the worker measured it (NULL when it is not known).
    duration_ms     integer,
    PRIMARY KEY (batch_id, call_id)
);
CREATE INDEX tool_calls_by_conversation ON tool_calls (conversation_id);

-- What `assistant-worker assistants sync` made at the API for each profile.
CREATE TABLE synced_objects (
    profile     text NOT NULL,
    -- assistant, vector_store, or knowledge_file (key: the document's path in the folder)
    kind        text NOT NULL,
    key         text NOT NULL,
    object_id   text NOT NULL,
    content_sha256 text,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (profile, kind, key)
);

-- Webhook deliveries, each recorded once (the receiver dedupes on webhook-id).
CREATE TABLE webhook_deliveries (
    webhook_id  text PRIMARY KEY,
    event_type  text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

-- Responses whose ending a webhook announced; the run's owner reads them (NOTIFY wakes it).
CREATE TABLE ended_responses (
    response_id text PRIMARY KEY,
    event_type  text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
