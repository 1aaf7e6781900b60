"""Talking to AimHarder: the booking client (`client`), the account site (`account`:
login, token refresh, class listings) and the reading of its answers (`outcomes`).

May import the shared ground (`prebookd.settings`, `models`, `errors`, `log`,
`timeparse`) and nothing else of prebookd: never `daemon`, `db`, `cli`, `demo` or `sim`.
"""
