-- 0007: every reply carries its conversation's next sequence number, counted in the
-- conversation's row; a handoff the model asked for (handoff_to_human) is kept with its batch
-- until the batch settles, so an owner that resumes the batch still hands it off.
ALTER TABLE conversations ADD COLUMN last_reply_sequence integer NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN handoff jsonb;
