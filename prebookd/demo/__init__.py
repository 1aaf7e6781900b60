"""`prebookd demo`: a daemon, an embedded Postgres and the simulator on one machine,
booking a class while you watch (`run`), and what it prints (`view`).

The top layer, beside `cli`: may import `daemon`, `db`, `sim` and the shared ground.
"""
