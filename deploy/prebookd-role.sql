-- A least-privilege Postgres role for the prebookd daemon.
--
-- Who runs what:
--   * The OWNER role (the web app's, or whoever owns the tables) runs the migrations:
--     `prebookd migrate` with PREBOOKD_DATABASE_URL naming the owner. Migrations add
--     columns, an index and a trigger, which only the owner may do.
--   * The owner then runs THIS file, in the database prebookd uses:
--         psql "postgresql://OWNER@HOST/DB" -v ON_ERROR_STOP=1 -f deploy/prebookd-role.sql
--     and gives the role a password (psql, so it stays out of shell history and logs):
--         \password prebookd_app
--   * The daemon connects as prebookd_app (PREBOOKD_DATABASE_URL in
--     /etc/prebookd/prebookd.env). It can read what it needs and write only the columns
--     it owns on prebookings and the token columns of auth_sessions; it cannot create,
--     alter, drop or delete anything, nor change a booking's user, box or class. Its
--     planner inserts the prebookings recurring rules make, and moves their instant
--     when a box's booking window changes (it could move any row's: column grants
--     cannot tell a rule's rows from others).
--
-- Run it again after each upgrade that brings a migration (deploy/README.md says
-- when): it is idempotent, and a new column prebookd writes needs its grant here.
-- LISTEN/NOTIFY needs no grant: any role may LISTEN, and the notify trigger runs with
-- the rights of whoever updates the row.
--
-- The producer-side CLI (`prebookd box add|set|remove`, `add`, `cancel`, `login`) also
-- INSERTs, UPDATEs and (`box remove`) DELETEs boxes and prebookings; run it as the
-- owner or the web app's role, not as this one. See the note at the end.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'prebookd_app') THEN
        -- No password here: set it with \password so it never sits in a file.
        CREATE ROLE prebookd_app LOGIN;
    END IF;
END
$$;

-- Not a superuser, no role or database creation, no replication, bounded sessions:
-- the pool (PREBOOKD_DB_POOL_MAX) plus the LISTEN connection plus one for
-- `prebookd migrate`-style checks at start-up. Raise it with the pool size.
ALTER ROLE prebookd_app NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    CONNECTION LIMIT 20;

-- CONNECT is granted to PUBLIC by default, but hardened servers revoke it.
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO prebookd_app', current_database());
END
$$;

-- Start from nothing on the tables, so that re-running this file after a change
-- also takes away what is no longer listed.
REVOKE ALL ON boxes, auth_sessions, prebookings FROM prebookd_app;
REVOKE ALL ON prebookd_migrations FROM prebookd_app;
REVOKE ALL ON prebookd_rules, prebookd_away, prebookd_rule_misses FROM prebookd_app;
REVOKE ALL ON prebookd_notify_channels, prebookd_outbox FROM prebookd_app;

GRANT USAGE ON SCHEMA public TO prebookd_app;

-- The daemon checks at start-up that the schema is migrated.
GRANT SELECT ON prebookd_migrations TO prebookd_app;

-- Boxes: read only (subdomain and base URL, joined when a row is claimed).
GRANT SELECT ON boxes TO prebookd_app;

-- Sessions: read the member's background session; write back only what a token
-- refresh changes.
GRANT SELECT ON auth_sessions TO prebookd_app;
GRANT UPDATE (aimharder_token, aimharder_cookies, last_token_update_date,
              token_update_count, last_token_update_error, updated_at)
    ON auth_sessions TO prebookd_app;

-- Prebookings: read everything; write the status, the lease and the result columns.
-- user_email, box_id, booking_data, available_at and created_at stay the web app's.
GRANT SELECT ON prebookings TO prebookd_app;
GRANT UPDATE (status, result, error_message, loaded_at, executed_at,
              lease_owner, lease_expires_at, attempts, written_at, lateness_ms,
              outcome, fired_by, send_note, booked_choice, watch, watch_until,
              watch_claim_owner, watch_claim_expires_at)
    ON prebookings TO prebookd_app;

-- Recurring rules and days away: read only (the CLI or the web app writes them). The
-- planner inserts the rows rules make, moves their instant when a box's window
-- changes, clears rule_day when a rule withdraws a row, and keeps the classes it found
-- missing.
GRANT SELECT ON prebookd_rules, prebookd_away TO prebookd_app;
GRANT INSERT (user_email, box_id, booking_data, available_at, status, class_label,
              rule_id, rule_day, alternatives, watch)
    ON prebookings TO prebookd_app;
GRANT UPDATE (available_at, rule_day) ON prebookings TO prebookd_app;
GRANT SELECT, INSERT, UPDATE ON prebookd_rule_misses TO prebookd_app;
-- Notifications (migration 0008): read members' channels; write the outbox (a message
-- is inserted with the result it reports, then marked sent, retried or dead).
GRANT SELECT ON prebookd_notify_channels TO prebookd_app;
GRANT SELECT, INSERT, UPDATE ON prebookd_outbox TO prebookd_app;
-- prebookd's own history: messages delivered and rule misses older than
-- PREBOOKD_HISTORY_DAYS are deleted (db/history_store.py).
GRANT DELETE ON prebookd_outbox, prebookd_rule_misses TO prebookd_app;

-- Note: to let this role also run the producer-side CLI (tests, a demo), add
--     GRANT INSERT ON boxes, prebookings TO prebookd_app;
-- (`rule ...` and `away ...` write prebookd_rules and prebookd_away: the owner's too.)
-- `prebookd cancel` needs nothing more than the UPDATE (status) above; `box set` and
-- `box remove` need UPDATE and DELETE on boxes (and DELETE on prebookings for
-- `--with-history`): keep those with the owner. The daemon deletes nothing but its own
-- history above.
