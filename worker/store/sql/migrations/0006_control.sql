-- 0006: the helpdesk steers conversations (conversation_control.v1). A control event is stored
-- as an inbound event of its own, in order with the user messages; a conversation is answered
-- by the assistant or held by a human; replies name their conversation, so erasing one can
-- find them.
CREATE TYPE control_action AS ENUM
    ('takeover', 'release', 'cancel', 'close', 'erase', 'update_metadata');
CREATE TYPE conversation_mode AS ENUM ('assistant', 'human');

ALTER TABLE inbound_events ADD COLUMN control control_action;
ALTER TABLE conversations ADD COLUMN mode conversation_mode NOT NULL DEFAULT 'assistant';
ALTER TABLE outbox ADD COLUMN conversation_id text;
CREATE INDEX outbox_conversation_idx ON outbox (conversation_id)
    WHERE conversation_id IS NOT NULL;
