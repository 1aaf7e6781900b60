-- What prebookd itself needs: new columns only (the web app's stay as they are),
-- the indexes its queries use, and the trigger that wakes the listener.

ALTER TABLE prebookings
    ADD COLUMN IF NOT EXISTS lease_owner      text,
    ADD COLUMN IF NOT EXISTS lease_expires_at timestamptz,
    ADD COLUMN IF NOT EXISTS attempts         integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS written_at       timestamptz,
    ADD COLUMN IF NOT EXISTS lateness_ms      double precision,
    ADD COLUMN IF NOT EXISTS outcome          text,
    ADD COLUMN IF NOT EXISTS fired_by         text;

COMMENT ON COLUMN prebookings.lease_owner IS 'prebookd instance that claimed the row';
COMMENT ON COLUMN prebookings.lease_expires_at IS 'until when lease_owner alone may fire it';
COMMENT ON COLUMN prebookings.attempts IS 'booking requests written for this row';
COMMENT ON COLUMN prebookings.written_at IS 'when the first booking request was written';
COMMENT ON COLUMN prebookings.lateness_ms IS 'written_at minus available_at, in ms';
COMMENT ON COLUMN prebookings.outcome IS 'short outcome code: booked, waitlisted, full, ...';
COMMENT ON COLUMN prebookings.fired_by IS 'prebookd instance that sent the request';

-- The daemon's resync: rows still to fire, in firing order.
CREATE INDEX IF NOT EXISTS prebookings_to_fire_idx
    ON prebookings (available_at, created_at)
    WHERE status IN ('pending', 'loaded');

CREATE INDEX IF NOT EXISTS prebookings_user_email_idx ON prebookings (user_email);
CREATE INDEX IF NOT EXISTS auth_sessions_user_email_idx ON auth_sessions (user_email);

-- The payload stays tiny whatever the row holds (NOTIFY payloads must be < 8000 bytes),
-- yet carries what scheduling needs, so a new row is armed without reading it back.
CREATE OR REPLACE FUNCTION prebookd_notify_prebookings() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    changed prebookings;
BEGIN
    IF TG_OP = 'DELETE' THEN
        changed := OLD;
    ELSE
        changed := NEW;
    END IF;
    PERFORM pg_notify('prebookings', json_build_object(
        'op', lower(TG_OP),
        'id', changed.id,
        'available_at', changed.available_at,
        'created_at', changed.created_at,
        'status', changed.status
    )::text);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS prebookings_notify_insert_delete ON prebookings;
CREATE TRIGGER prebookings_notify_insert_delete
    AFTER INSERT OR DELETE ON prebookings
    FOR EACH ROW EXECUTE FUNCTION prebookd_notify_prebookings();

-- Only real changes of the instant or the status: an UPDATE that rewrites other
-- columns (results, leases) does not wake anyone.
DROP TRIGGER IF EXISTS prebookings_notify_update ON prebookings;
CREATE TRIGGER prebookings_notify_update
    AFTER UPDATE OF available_at, status ON prebookings
    FOR EACH ROW
    WHEN (OLD.available_at IS DISTINCT FROM NEW.available_at
          OR OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION prebookd_notify_prebookings();
