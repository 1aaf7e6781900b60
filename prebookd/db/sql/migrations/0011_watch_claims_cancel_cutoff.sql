-- Freed places with two instances on one database: before an instance sends a watched
-- row's booking request it claims the row (db/watch_store.py), unless another instance
-- holds a live claim on a watcher of the same class; a claim runs out by itself, so a
-- crashed instance does not block a class for ever. New nullable columns of prebookd's
-- own; the web app never writes them.
ALTER TABLE prebookings ADD COLUMN IF NOT EXISTS watch_claim_owner text;
ALTER TABLE prebookings ADD COLUMN IF NOT EXISTS watch_claim_expires_at timestamptz;

COMMENT ON COLUMN prebookings.watch_claim_owner IS
    'the process sending this watched row''s freed-place request (null: none)';
COMMENT ON COLUMN prebookings.watch_claim_expires_at IS
    'the watch claim counts until then (its holder may have died)';

-- A claim looks for other live claims of its class: only rows claimed now are indexed.
CREATE INDEX IF NOT EXISTS prebookings_watch_claims
    ON prebookings (box_id) WHERE watch_claim_owner IS NOT NULL;

-- Each box's cancellation cutoff: members may cancel until this long before a class
-- starts, so a freed place is watched for until then (a row's `watch_until` when null).
-- Null: the PREBOOKD_WATCH_CUTOFF setting.
ALTER TABLE boxes ADD COLUMN IF NOT EXISTS cancel_cutoff_seconds integer;

COMMENT ON COLUMN boxes.cancel_cutoff_seconds IS
    'members may cancel until this many seconds before a class (null: the watch_cutoff setting)';

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conname = 'boxes_cancel_cutoff_check' AND conrelid = 'boxes'::regclass
    ) THEN
        ALTER TABLE boxes ADD CONSTRAINT boxes_cancel_cutoff_check
            CHECK (cancel_cutoff_seconds BETWEEN 0 AND 7 * 86400);
    END IF;
END
$$;
