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
