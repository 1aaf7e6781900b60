"""The database: connections (`connection`), the embedded Postgres (`embedded`),
versioned migrations (`migrate`, `sql/migrations/`) and every SQL statement (`store` for
the daemon, `admin_store` for the command line).

May import the shared ground (`prebookd.settings`, `models`, `errors`, `log`,
`timeparse`) and nothing else of prebookd: never `daemon`, `aimharder`, `cli`, `demo` or
`sim`.
"""
