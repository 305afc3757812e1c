-- 0008: the profile a conversation was first answered with sticks to it; every function tool
-- call is recorded before its handler runs and again when it has ended, so a worker that
-- resumes the batch tells "never called" from "outcome unknown" and never calls a tool that
-- is not idempotent twice; what `assistants sync` made at the API is recorded, by profile.
ALTER TABLE conversations ADD COLUMN profile text;

CREATE TYPE tool_call_state AS ENUM ('started', 'ok', 'error', 'unknown');

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
