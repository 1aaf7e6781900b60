-- E-mail addresses are matched case-insensitively everywhere (the web app, the CLI and
-- the daemon may each have written `Jane@...` or `jane@...`): the joins on lower()
-- need these indexes to stay index lookups.

CREATE INDEX IF NOT EXISTS auth_sessions_user_email_lower_idx
    ON auth_sessions (lower(user_email));
CREATE INDEX IF NOT EXISTS prebookings_user_email_lower_idx
    ON prebookings (lower(user_email));
