-- 0005: the whole event contract. Events coalesce only with neighbours that share what a run
-- applies to all of its messages; failures no other class covers are counted per batch, so the
-- count survives a handover; files the model is sent are recorded before the run is created.
ALTER TABLE inbound_events ADD COLUMN batch_key text;
ALTER TABLE batches ADD COLUMN failures integer NOT NULL DEFAULT 0;

CREATE TABLE attachments (
    event_id   text NOT NULL REFERENCES inbound_events ON DELETE CASCADE,
    position   integer NOT NULL,
    file_id    text NOT NULL,
    filename   text NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('document', 'image')),
    uploaded   boolean NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, position)
);
CREATE INDEX attachments_uploaded_idx ON attachments (event_id) WHERE uploaded;
