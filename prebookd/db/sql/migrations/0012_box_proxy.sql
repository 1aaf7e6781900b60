-- A box's own proxy (issue 18): AimHarder answers 403 to some cloud address ranges,
-- so requests to a box may go through a proxy of its own (`prebookd box set --proxy`).
-- NULL: the global PREBOOKD_PROXY_URL (or none). A new nullable column of prebookd's
-- own: the web app's inserts are unchanged.

ALTER TABLE boxes ADD COLUMN IF NOT EXISTS proxy_url text;

COMMENT ON COLUMN boxes.proxy_url IS
    'proxy for this box''s requests: http://, https:// or socks5://[user:password@]host:port; NULL: PREBOOKD_PROXY_URL';

-- Only the scheme is checked here (the daemon checks the rest, and a row of a box whose
-- proxy it cannot read fails with the reason): a URL of another kind is refused.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conname = 'boxes_proxy_url_check' AND conrelid = 'boxes'::regclass
    ) THEN
        ALTER TABLE boxes ADD CONSTRAINT boxes_proxy_url_check CHECK (
            proxy_url IS NULL OR proxy_url ~* '^\s*(https?|socks5)://'
        );
    END IF;
END
$$;
