"""`prebookd run`: the daemon and everything only it uses.

`main` wires it and runs it; `engine` turns rows into armed firings (intake, claims,
leases); `scheduler` is the heap of instants; `firing` and `clock` send a burst at its
instant, `choices` its retries and alternatives; `watchers` books freed places and
follows waiting lists; `listener` hears NOTIFY; `results` and `spool` write outcomes
back; `sessions` keeps members' tokens fresh; `planner` turns rules into rows;
`listing_watch` warns of hand-made rows at risk (`listings`: a (box, day) listing read,
shared); `supervise`, `systemd`, `status` and `metrics` run it as a service.

May import `aimharder`, `db` and the shared ground; never `cli`, `demo` or `sim`.
"""
