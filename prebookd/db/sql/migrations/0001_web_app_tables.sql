-- The web app's tables, exactly as its data contract describes them.
-- On a database where the web app already created them, every statement here is a
-- no-op: prebookd never changes or drops what the web app owns.

CREATE TABLE IF NOT EXISTS boxes (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    box_id      text UNIQUE,
    subdomain   text UNIQUE,
    name        text,
    base_url    text,
    timezone    text DEFAULT 'Europe/Madrid',
    created_at  timestamptz DEFAULT now(),
    updated_at  timestamptz DEFAULT now()
);

CREATE TABLE IF NOT EXISTS auth_sessions (
    id                      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_email              text,
    aimharder_token         text,
    aimharder_cookies       jsonb,
    fingerprint             varchar(50),
    session_type            text,
    last_token_update_date  timestamptz,
    token_update_count      integer DEFAULT 0,
    last_token_update_error text,
    created_at              timestamptz DEFAULT now(),
    updated_at              timestamptz DEFAULT now(),
    UNIQUE (user_email, fingerprint)
);

CREATE TABLE IF NOT EXISTS prebookings (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_email     text,
    box_id         uuid REFERENCES boxes (id),
    booking_data   jsonb,
    available_at   timestamptz,
    status         text DEFAULT 'pending',
    result         jsonb,
    error_message  text,
    created_at     timestamptz DEFAULT now(),
    loaded_at      timestamptz,
    executed_at    timestamptz
);
