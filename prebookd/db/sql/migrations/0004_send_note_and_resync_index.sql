-- How a request went out when it was not simply written from its gate at the instant
-- (its staged connection lost before the instant, staged again; sent cold), and an
-- index that serves the resync whole.

ALTER TABLE prebookings ADD COLUMN IF NOT EXISTS send_note text;

COMMENT ON COLUMN prebookings.send_note IS
    'how the request went out, when not from a connection ready at the instant';

-- The resync reads pending, loaded and executing rows (an executing row may have to be
-- taken over). The index of 0002 left executing out, so the planner could not use it
-- for that query and read the whole, ever-growing table every reconcile.
DROP INDEX IF EXISTS prebookings_to_fire_idx;
CREATE INDEX prebookings_to_fire_idx
    ON prebookings (available_at, created_at)
    WHERE status IN ('pending', 'loaded', 'executing');
