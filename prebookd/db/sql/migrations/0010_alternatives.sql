-- Second chances at the instant: backup classes tried, in order, when the first choice
-- answers "full" (or "already booked at that time"). New nullable columns of prebookd's
-- own; the web app may write `alternatives`, a row without it books as before.

ALTER TABLE prebookings ADD COLUMN IF NOT EXISTS alternatives jsonb;
ALTER TABLE prebookings ADD COLUMN IF NOT EXISTS booked_choice smallint;

COMMENT ON COLUMN prebookings.alternatives IS
    'backup classes in order of preference, each {"id", "day", "familyId", "insist"} as '
    'booking_data; tried at the instant when the choice before answers full';
COMMENT ON COLUMN prebookings.booked_choice IS
    'which choice the final answer was for: 0 booking_data, n the nth alternative';

-- Freed places: a row that ended "full" with `watch` set is watched until
-- `watch_until` (null: the class start minus PREBOOKD_WATCH_CUTOFF), and booked when
-- the class's listing shows a free place, oldest rows first.
ALTER TABLE prebookings ADD COLUMN IF NOT EXISTS watch boolean NOT NULL DEFAULT false;
ALTER TABLE prebookings ADD COLUMN IF NOT EXISTS watch_until timestamptz;

-- What the watch reads every few seconds (db/watch_store.py): rows watched for a freed
-- place, and rows on a waiting list (watched for their promotion).
CREATE INDEX IF NOT EXISTS prebookings_watched
    ON prebookings (created_at)
    WHERE (watch AND status = 'failed' AND outcome = 'full')
       OR (status = 'completed' AND outcome = 'waitlisted');

COMMENT ON COLUMN prebookings.watch IS
    'when the class answered full: watch its listing for a freed place and book it';
COMMENT ON COLUMN prebookings.watch_until IS
    'watching stops then (null: the class start minus the watch cutoff setting)';

-- A rule's `--watch`: the rows it makes are watched when their class is full.
ALTER TABLE prebookd_rules ADD COLUMN IF NOT EXISTS watch boolean NOT NULL DEFAULT false;
