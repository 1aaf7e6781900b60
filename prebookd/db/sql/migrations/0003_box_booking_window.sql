-- When each box opens booking, so `prebookd add` can derive `available_at` from the
-- class's start time instead of being told it. New nullable columns only: a box
-- without a window (every box the web app created) keeps working as before, and
-- `prebookd add` then needs an explicit --at.
--
--   kind 'days'     length N: N calendar days before, at the class's wall time
--                   (07:00 Madrid stays 07:00 across a daylight-saving change)
--   kind 'hours'    length N: N elapsed hours before the class starts
--   kind 'same_day' length NULL: 00:00 of the class day, in the box's time zone

ALTER TABLE boxes
    ADD COLUMN IF NOT EXISTS booking_window_kind   text,
    ADD COLUMN IF NOT EXISTS booking_window_length integer;

COMMENT ON COLUMN boxes.booking_window_kind IS
    'when booking opens: days | hours (booking_window_length before the class) | same_day (00:00)';
COMMENT ON COLUMN boxes.booking_window_length IS
    'days or hours before the class start; NULL for same_day';

-- Both columns are prebookd's own, so a constraint on them cannot refuse anything the
-- web app writes; it keeps a half-set or nonsensical window out of the table.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conname = 'boxes_booking_window_check' AND conrelid = 'boxes'::regclass
    ) THEN
        ALTER TABLE boxes ADD CONSTRAINT boxes_booking_window_check CHECK (
            (booking_window_kind IS NULL AND booking_window_length IS NULL)
            OR (booking_window_kind = 'same_day' AND booking_window_length IS NULL)
            OR (booking_window_kind = 'days' AND booking_window_length BETWEEN 1 AND 31)
            OR (booking_window_kind = 'hours' AND booking_window_length BETWEEN 1 AND 744)
        );
    END IF;
END
$$;
