-- One process fires a whole (box, instant) group: every claim, and every read of a row
-- by the daemon, looks for live leases on the other rows of the row's group.

CREATE INDEX IF NOT EXISTS prebookings_held_groups_idx
    ON prebookings (box_id, available_at)
    WHERE status IN ('loaded', 'executing');
