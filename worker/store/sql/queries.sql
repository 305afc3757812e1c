-- Every statement the worker runs, by name. Loaded once by worker/store/queries.py.
-- Parameters are listed in each header comment.

-- name: lock_conversation
-- Creates the conversation on first contact (with the assistant and profile that contact
-- chose) and row-locks it until the transaction ends, so intake and lease release serialise
-- per conversation. Returns the backend the conversation is on.
-- $1 conversation_id, $2 backend, $3 assistant_id, $4 profile
INSERT INTO conversations (conversation_id, backend, assistant_id, profile)
VALUES ($1, $2, $3, $4)
ON CONFLICT (conversation_id) DO UPDATE SET updated_at = now()
RETURNING backend;

-- name: lock_known_conversation
-- As lock_conversation, for a control event: it never creates the conversation. Returns its
-- backend, or no row for a conversation the worker has never seen.
-- $1 conversation_id
SELECT backend FROM conversations WHERE conversation_id = $1 FOR UPDATE;

-- name: insert_event
-- Stores the event if it is new, and then takes the conversation's lease if it is free, as
-- acquire_lease does: a new event always needs its answer, and one round trip does both.
-- seq is NULL for an event stored before; lease_token is NULL when the lease was not free.
-- $1 event_id, $2 conversation_id, $3 body, $4 headers, $5 routing_key, $6 replay_count,
-- $7 occurred_at, $8 batch_key, $9 control action or NULL, $10 trace_context or NULL,
-- $11 lease_token, $12 lease_owner, $13 lease ttl seconds
WITH inserted AS (
    INSERT INTO inbound_events (event_id, conversation_id, body, headers, routing_key,
                                replay_count, occurred_at, batch_key, control, trace_context)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
    ON CONFLICT (event_id) DO NOTHING
    RETURNING seq
), leased AS (
    UPDATE conversations
    SET lease_token = $11, lease_owner = $12,
        lease_expires_at = now() + make_interval(secs => $13), updated_at = now()
    WHERE conversation_id = $2 AND (lease_token IS NULL OR lease_expires_at <= now())
      AND EXISTS (SELECT 1 FROM inserted)
    RETURNING lease_token
)
SELECT (SELECT seq FROM inserted) AS seq, (SELECT lease_token FROM leased) AS lease_token;

-- name: get_event
-- $1 event_id
SELECT status, replay_count, conversation_id FROM inbound_events WHERE event_id = $1;

-- name: reopen_event
-- An operator replayed the event: treat it as new (its answer joins the replay's trace).
-- $1 event_id, $2 replay_count, $3 body, $4 headers, $5 batch_key, $6 trace_context or NULL
UPDATE inbound_events
SET status = 'pending', batch_id = NULL, replay_count = $2, body = $3, headers = $4,
    settled_at = NULL, batch_key = $5, trace_context = $6
WHERE event_id = $1;

-- name: acquire_lease
-- $1 conversation_id, $2 lease_token, $3 lease_owner, $4 ttl seconds
UPDATE conversations
SET lease_token = $2, lease_owner = $3,
    lease_expires_at = now() + make_interval(secs => $4), updated_at = now()
WHERE conversation_id = $1 AND (lease_token IS NULL OR lease_expires_at <= now())
RETURNING conversation_id;

-- name: renew_leases
-- $1 lease tokens held by this process, $2 ttl seconds
UPDATE conversations
SET lease_expires_at = now() + make_interval(secs => $2)
WHERE lease_token = ANY($1::uuid[])
RETURNING lease_token;

-- name: fence
-- Locks the conversation row if the caller still holds the lease.
-- $1 conversation_id, $2 lease_token
SELECT backend, thread_id, assistant_id, last_item_id, mode, last_reply_sequence, profile
FROM conversations
WHERE conversation_id = $1 AND lease_token = $2
FOR UPDATE;

-- name: hand_back_lease
-- Lets another worker take the conversation at once (shutdown), keeping the token so late
-- writes by this process stay fenced until someone else takes it over.
-- $1 conversation_id, $2 lease_token
UPDATE conversations SET lease_expires_at = now()
WHERE conversation_id = $1 AND lease_token = $2;

-- name: set_thread
-- $1 conversation_id, $2 thread_id
UPDATE conversations SET thread_id = $2, updated_at = now() WHERE conversation_id = $1;

-- name: start_batch
-- Opens a batch of the oldest pending events (in the order the customer wrote them when the
-- helpdesk said, else in the order stored) and returns them in that order; no rows, and no
-- batch, when none wait. A batch ends before the first event whose batch_key differs from the
-- oldest one's: a run applies metadata, author and assistant to all of its messages. When
-- none wait, it gives the lease up instead: intake locks the conversation row before adding an
-- event, and so does the fence this runs under, so an event stored after this look finds the
-- lease free and takes it. One statement: it runs inside the owner's fenced transaction.
-- $1 batch_id, $2 conversation_id, $3 limit, $4 after_item_id, $5 lease_token
WITH candidates AS (
    SELECT event_id, body, headers, routing_key, received_at, batch_key, control, trace_context,
           row_number() OVER (ORDER BY coalesce(occurred_at, received_at), seq) AS position
    FROM inbound_events
    WHERE conversation_id = $2 AND status = 'pending'
    ORDER BY coalesce(occurred_at, received_at), seq
    LIMIT $3
), cut AS (
    SELECT min(c.position) AS at
    FROM candidates c, candidates oldest
    WHERE oldest.position = 1 AND c.batch_key IS DISTINCT FROM oldest.batch_key
), pending AS (
    SELECT * FROM candidates
    WHERE position < coalesce((SELECT at FROM cut), position + 1)
), opened AS (
    INSERT INTO batches (batch_id, conversation_id, event_ids, after_item_id)
    SELECT $1, $2, array_agg(event_id ORDER BY position), $4
    FROM pending
    HAVING count(*) > 0
), marked AS (
    UPDATE inbound_events SET status = 'batched', batch_id = $1
    WHERE event_id IN (SELECT event_id FROM pending)
), released AS (
    UPDATE conversations
    SET lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
    WHERE conversation_id = $2 AND lease_token = $5 AND NOT EXISTS (SELECT 1 FROM pending)
)
SELECT event_id, body, headers, routing_key, received_at, control, trace_context
FROM pending ORDER BY position;

-- name: fence_with_open_batch
-- As fence, and the conversation's open batch (its columns NULL when it has none): the first
-- look of next_batch, one round trip.
-- $1 conversation_id, $2 lease_token
SELECT c.backend, c.thread_id, c.assistant_id, c.last_item_id, c.mode, c.last_reply_sequence,
       c.profile, b.batch_id, b.event_ids, b.attempt, b.run_id, b.messages_added,
       b.after_item_id, b.failures, b.handoff
FROM conversations c
LEFT JOIN batches b ON b.conversation_id = c.conversation_id AND b.status = 'open'
WHERE c.conversation_id = $1 AND c.lease_token = $2
FOR UPDATE OF c;

-- name: batch_events
-- $1 event_ids, in the batch's order
SELECT e.event_id, e.body, e.headers, e.routing_key, e.received_at, e.control, e.trace_context
FROM unnest($1::text[]) WITH ORDINALITY AS b(event_id, position)
JOIN inbound_events e USING (event_id)
ORDER BY b.position;

-- name: record_run_started
-- Fenced by itself (the fence's row lock, then the writes only if the lease held): once per
-- run, so one round trip instead of a transaction's four. Returns 0 when the lease is lost.
-- $1 batch_id, $2 run_id, $3 attempt, $4 conversation_id, $5 lease_token
WITH fence AS (
    SELECT 1 FROM conversations WHERE conversation_id = $4 AND lease_token = $5 FOR UPDATE
), started AS (
    UPDATE batches SET run_id = $2, attempt = $3, messages_added = true
    WHERE batch_id = $1 AND EXISTS (SELECT 1 FROM fence)
    RETURNING batch_id
), recorded AS (
    INSERT INTO runs (run_id, batch_id, attempt, status)
    SELECT $2, batch_id, $3, 'started' FROM started
    ON CONFLICT (run_id) DO NOTHING
)
SELECT count(*) FROM fence;

-- name: record_batch_failure
-- A failure no other class covers; returns how many the batch has had.
-- $1 batch_id
UPDATE batches SET failures = failures + 1, first_failure_at = coalesce(first_failure_at, now())
WHERE batch_id = $1
RETURNING failures, first_failure_at;

-- name: batch_attachments
-- The files recorded for a batch's events, so none is uploaded twice.
-- $1 event_ids
SELECT event_id, position, file_id, filename, kind
FROM attachments WHERE event_id = ANY($1::text[]);

-- name: record_attachment
-- Right after the upload (or the look-up of a referenced file), before the run is created.
-- $1 event_id, $2 position, $3 file_id, $4 filename, $5 kind, $6 uploaded
INSERT INTO attachments (event_id, position, file_id, filename, kind, uploaded)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (event_id, position) DO NOTHING;

-- name: prunable_files
-- Files the worker uploaded for events `prune` is about to delete.
-- $1 cutoff, $2 at most this many rows
SELECT a.event_id, a.position, a.file_id
FROM attachments a JOIN inbound_events e USING (event_id)
WHERE a.uploaded AND e.status IN ('answered', 'dead_lettered') AND e.settled_at < $1
LIMIT $2;

-- name: forget_files
-- Their files are deleted at the API; the rows go too.
-- $1 event_ids, $2 positions (pairwise)
DELETE FROM attachments a
USING unnest($1::text[], $2::integer[]) AS f(event_id, position)
WHERE a.event_id = f.event_id AND a.position = f.position;

-- name: record_run_ended
-- $1 run_id, $2 status, $3 polls, $4 usage, $5 error
UPDATE runs SET status = $2, polls = polls + $3, usage = $4, error = $5, ended_at = now()
WHERE run_id = $1;

-- name: record_run_retry
-- The run ended for a transient reason; the batch gets a new run (messages are already added).
-- $1 batch_id, $2 after_item_id for the next attempt
UPDATE batches
SET run_id = NULL, first_failure_at = coalesce(first_failure_at, now()), after_item_id = $2
WHERE batch_id = $1;

-- name: close_batch
-- Closes the batch, settles its events, records how its run ended (when it had one) and moves
-- the conversation's item watermark (when given): one statement, inside the fenced transaction.
-- Returns the interrupt waiting in the conversation, as pending_interrupt does: read under the
-- fence's row lock, which intake takes too, so a takeover stored before this commits is seen.
-- $1 batch_id, $2 final event status ('answered' or 'dead_lettered'), $3 conversation_id,
-- $4 last_item_id or NULL, $5 run_id or NULL, $6 run status, $7 polls, $8 usage, $9 error
WITH closed AS (
    UPDATE batches SET status = 'finished', finished_at = now()
    WHERE batch_id = $1
    RETURNING event_ids
), settled AS (
    UPDATE inbound_events SET status = $2::event_status, settled_at = now()
    WHERE event_id = ANY((SELECT event_ids FROM closed)::text[])
), ended AS (
    UPDATE runs SET status = $6, polls = polls + $7, usage = $8, error = $9, ended_at = now()
    WHERE run_id = $5
), advanced AS (
    UPDATE conversations SET last_item_id = $4
    WHERE conversation_id = $3 AND $4::text IS NOT NULL
)
SELECT control AS interrupt FROM inbound_events
WHERE conversation_id = $3 AND status = 'pending'
  AND control IN ('takeover', 'cancel', 'close', 'erase')
ORDER BY coalesce(occurred_at, received_at), seq
LIMIT 1;

-- name: pending_window
-- Debouncing a quiet conversation: how long ago its first and newest pending events came, by
-- the database's clock, and whether a control event waits among them. No row while a batch is
-- open (it resumes at once) or nothing waits.
-- $1 conversation_id
SELECT extract(epoch FROM now() - min(received_at))::float8 AS first_age_s,
       extract(epoch FROM now() - max(received_at))::float8 AS newest_age_s,
       bool_or(control IS NOT NULL) AS control
FROM inbound_events
WHERE conversation_id = $1 AND status = 'pending'
  AND NOT EXISTS (SELECT 1 FROM batches WHERE conversation_id = $1 AND status = 'open')
HAVING count(*) > 0;

-- name: pending_interrupt
-- The first control event waiting in the conversation that stops its active run at once.
-- $1 conversation_id
SELECT control FROM inbound_events
WHERE conversation_id = $1 AND status = 'pending'
  AND control IN ('takeover', 'cancel', 'close', 'erase')
ORDER BY coalesce(occurred_at, received_at), seq
LIMIT 1;

-- name: record_handoff
-- The model called handoff_to_human in the batch's run; the last call's request stands.
-- $1 batch_id, $2 request (reason, summary)
UPDATE batches SET handoff = $2 WHERE batch_id = $1;

-- name: set_mode
-- $1 conversation_id, $2 mode
UPDATE conversations SET mode = $2, updated_at = now() WHERE conversation_id = $1;

-- name: forget_thread
-- close: the thread and the uploaded files are deleted at the API; the next message starts a
-- new thread, answered by the assistant.
-- $1 conversation_id
WITH files AS (
    DELETE FROM attachments a USING inbound_events e
    WHERE a.event_id = e.event_id AND e.conversation_id = $1 AND a.uploaded
)
UPDATE conversations
SET thread_id = NULL, last_item_id = NULL, mode = 'assistant', updated_at = now()
WHERE conversation_id = $1;

-- name: conversation_files
-- The files the worker uploaded for a conversation's events, to delete at the API on close.
-- $1 conversation_id
SELECT a.file_id
FROM attachments a JOIN inbound_events e USING (event_id)
WHERE e.conversation_id = $1 AND a.uploaded
ORDER BY a.created_at;

-- name: erase_conversation
-- erase: what a settled event keeps is what duplicate detection needs (its ID, status and
-- times); its body, headers, file names, the model's handoff reason and summary (which may
-- quote the customer), and its replies, handoffs and dead letters in the outbox go. Events
-- still waiting are kept whole: they come after the erase and are new work.
-- $1 conversation_id
WITH events AS (
    UPDATE inbound_events
    SET body = ''::bytea, headers = '{}', batch_key = NULL
    WHERE conversation_id = $1 AND status IN ('batched', 'answered', 'dead_lettered')
    RETURNING event_id
), files AS (
    DELETE FROM attachments WHERE event_id IN (SELECT event_id FROM events)
), handoffs AS (
    UPDATE batches SET handoff = NULL WHERE conversation_id = $1 AND handoff IS NOT NULL
), tools AS (
    DELETE FROM tool_calls WHERE conversation_id = $1
)
DELETE FROM outbox WHERE conversation_id = $1;

-- name: begin_tool_call
-- Recorded before the handler runs. Returns the call's row: a row in state 'started' that
-- was not inserted now is a call a dead worker began, whose outcome is unknown.
-- $1 batch_id, $2 call_id, $3 conversation_id, $4 name, $5 arguments
WITH inserted AS (
    INSERT INTO tool_calls (batch_id, call_id, conversation_id, name, arguments)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (batch_id, call_id) DO NOTHING
    RETURNING call_id, name, arguments, state, output, duration_ms, true AS began
)
SELECT * FROM inserted
UNION ALL
SELECT call_id, name, arguments, state, output, duration_ms, false AS began
FROM tool_calls WHERE batch_id = $1 AND call_id = $2 AND NOT EXISTS (SELECT 1 FROM inserted);

-- name: end_tool_call
-- The first ending stands: a call is never ended twice with different outcomes.
-- $1 batch_id, $2 call_id, $3 state, $4 output, $5 duration_ms or NULL
UPDATE tool_calls SET state = $3, output = $4, ended_at = now(), duration_ms = $5
WHERE batch_id = $1 AND call_id = $2 AND state = 'started';

-- name: batch_tool_calls
-- $1 batch_id
SELECT call_id, name, arguments, state, output, duration_ms, false AS began
FROM tool_calls WHERE batch_id = $1 ORDER BY started_at, call_id;

-- name: sweepable_conversations
-- Conversations with work whose owner is gone (lease expired or never taken), found from the
-- pending events and open batches (both partially indexed), not by reading every conversation.
-- $1 limit
SELECT c.conversation_id
FROM conversations c
WHERE c.conversation_id IN (
        SELECT conversation_id FROM inbound_events WHERE status = 'pending'
        UNION
        SELECT conversation_id FROM batches WHERE status = 'open')
  AND (c.lease_token IS NULL OR c.lease_expires_at <= now())
LIMIT $1;

-- name: insert_outbox
-- With a sequence, the conversation's last reply sequence moves to it (the last reply a batch
-- writes carries it), in the same round trip.
-- $1 dedupe_key, $2 kind, $3 message_id, $4 exchange, $5 routing_key, $6 headers, $7 body,
-- $8 content_type, $9 conversation_id (replies) or NULL, $10 reply sequence or NULL
WITH sequenced AS (
    UPDATE conversations SET last_reply_sequence = $10
    WHERE conversation_id = $9 AND $10::integer IS NOT NULL
)
INSERT INTO outbox (dedupe_key, kind, message_id, exchange, routing_key, headers, body,
                    content_type, conversation_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (dedupe_key) DO NOTHING;

-- name: claim_outbox
-- SKIP LOCKED lets several workers drain the outbox without waiting on each other.
-- $1 limit
SELECT outbox_id, kind, message_id, exchange, routing_key, headers, body, content_type
FROM outbox
WHERE published_at IS NULL
ORDER BY outbox_id
LIMIT $1
FOR UPDATE SKIP LOCKED;

-- name: mark_published
-- $1 outbox_ids
UPDATE outbox SET published_at = now(), publish_attempts = publish_attempts + 1
WHERE outbox_id = ANY($1::bigint[]);

-- name: mark_publish_failed
-- $1 outbox_ids
UPDATE outbox SET publish_attempts = publish_attempts + 1
WHERE outbox_id = ANY($1::bigint[]);

-- name: outbox_backlog
SELECT count(*) FROM outbox WHERE published_at IS NULL;

-- name: move_conversations
-- Moves idle conversations (nobody owns them, nothing pending or running) to another backend.
-- Their thread cannot follow: the next message starts a new one there.
-- $1 target backend, $2 conversation_ids or NULL for every conversation on another backend
UPDATE conversations c
SET backend = $1, thread_id = NULL, last_item_id = NULL, updated_at = now()
WHERE c.backend <> $1
  AND ($2::text[] IS NULL OR c.conversation_id = ANY($2::text[]))
  AND (c.lease_token IS NULL OR c.lease_expires_at <= now())
  AND NOT EXISTS (SELECT 1 FROM inbound_events e
                  WHERE e.conversation_id = c.conversation_id AND e.status IN ('pending', 'batched'))
RETURNING conversation_id;

-- name: count_conversations_elsewhere
-- $1 target backend, $2 conversation_ids or NULL
SELECT count(*) FROM conversations
WHERE backend <> $1 AND ($2::text[] IS NULL OR conversation_id = ANY($2::text[]));

-- name: count_prunable
-- What `prune` would delete: settled events, finished batches (with their runs) and published
-- outbox rows, all settled before the cutoff. Conversations stay: they map to threads.
-- $1 cutoff
SELECT
    (SELECT count(*) FROM inbound_events
     WHERE status IN ('answered', 'dead_lettered') AND settled_at < $1) AS events,
    (SELECT count(*) FROM batches WHERE status = 'finished' AND finished_at < $1) AS batches,
    (SELECT count(*) FROM runs r JOIN batches b USING (batch_id)
     WHERE b.status = 'finished' AND b.finished_at < $1) AS runs,
    (SELECT count(*) FROM outbox WHERE published_at < $1) AS outbox,
    (SELECT count(*) FROM attachments a JOIN inbound_events e USING (event_id)
     WHERE a.uploaded AND e.status IN ('answered', 'dead_lettered') AND e.settled_at < $1)
        AS files,
    (SELECT count(*) FROM webhook_deliveries WHERE received_at < $1) AS webhook_deliveries,
    (SELECT count(*) FROM ended_responses WHERE received_at < $1) AS ended_responses;

-- name: prune_runs
-- $1 cutoff, $2 at most this many rows
DELETE FROM runs WHERE run_id IN (
    SELECT r.run_id FROM runs r JOIN batches b USING (batch_id)
    WHERE b.status = 'finished' AND b.finished_at < $1
    LIMIT $2);

-- name: prune_batches
-- After their runs (runs reference batches).
-- $1 cutoff, $2 at most this many rows
DELETE FROM batches WHERE batch_id IN (
    SELECT batch_id FROM batches b
    WHERE status = 'finished' AND finished_at < $1
      AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.batch_id = b.batch_id)
    LIMIT $2);

-- name: prune_events
-- $1 cutoff, $2 at most this many rows
DELETE FROM inbound_events WHERE event_id IN (
    SELECT event_id FROM inbound_events
    WHERE status IN ('answered', 'dead_lettered') AND settled_at < $1
    LIMIT $2);

-- name: prune_outbox
-- $1 cutoff, $2 at most this many rows
DELETE FROM outbox WHERE outbox_id IN (
    SELECT outbox_id FROM outbox WHERE published_at < $1 LIMIT $2);

-- name: prune_webhook_deliveries
-- A delivery forgotten is recorded anew if OpenAI retries it later (up to 72 hours): its
-- ending is then recorded again, for a run long answered, and changes nothing.
-- $1 cutoff, $2 at most this many rows
DELETE FROM webhook_deliveries WHERE webhook_id IN (
    SELECT webhook_id FROM webhook_deliveries WHERE received_at < $1 LIMIT $2);

-- name: prune_ended_responses
-- $1 cutoff, $2 at most this many rows
DELETE FROM ended_responses WHERE response_id IN (
    SELECT response_id FROM ended_responses WHERE received_at < $1 LIMIT $2);

-- assistants sync

-- name: synced_objects
-- What `assistants sync` made at the API and recorded, for every profile.
SELECT profile, kind, key, object_id, content_sha256 FROM synced_objects;

-- name: record_synced_object
-- $1 profile, $2 kind, $3 key, $4 object_id, $5 content_sha256 (knowledge files) or NULL
INSERT INTO synced_objects (profile, kind, key, object_id, content_sha256)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (profile, kind, key) DO UPDATE
SET object_id = EXCLUDED.object_id, content_sha256 = EXCLUDED.content_sha256, synced_at = now();

-- name: forget_synced_object
-- $1 profile, $2 kind, $3 key
DELETE FROM synced_objects WHERE profile = $1 AND kind = $2 AND key = $3;

-- name: try_sync_lock
-- One sync at a time: two at once would each create what the other has not recorded yet.
-- A session lock: it ends with the sync's connection.
SELECT pg_try_advisory_lock(hashtext('assistant-worker assistants sync'));

-- webhooks

-- name: record_webhook
-- A delivery, once: a new webhook-id records the response's ending (the first stands) and
-- says so (true), a duplicate changes nothing (false). The caller NOTIFYs in the same
-- transaction when it is new.
-- $1 webhook_id, $2 event_type, $3 response_id
WITH delivery AS (
    INSERT INTO webhook_deliveries (webhook_id, event_type) VALUES ($1, $2)
    ON CONFLICT (webhook_id) DO NOTHING
    RETURNING webhook_id
), ended AS (
    INSERT INTO ended_responses (response_id, event_type)
    SELECT $3, $2 WHERE EXISTS (SELECT 1 FROM delivery)
    ON CONFLICT (response_id) DO NOTHING
)
SELECT EXISTS (SELECT 1 FROM delivery) AS new;

-- name: notify_response_ended
-- Delivered at commit to every worker that LISTENs on aw_response_ended.
-- $1 response_id
SELECT pg_notify('aw_response_ended', $1);

-- name: response_ended
-- How a response ended, if a webhook said so.
-- $1 response_id
SELECT event_type FROM ended_responses WHERE response_id = $1;
