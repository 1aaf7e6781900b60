"""Notifications: members told of their results and of trouble ahead, the operator told
of the daemon's, and a dead-man's switch (issue 15).

`channels` wraps apprise (one URL per channel, about a hundred services), `messages`
makes the text (pure), `sender` delivers the outbox off the hot path in a bounded
thread pool of its own, `heartbeat` pings the dead-man's switch.

May import the database (`prebookd.db`) and the shared ground; never the daemon (what
it needs of it, the hot windows and the next instant, is handed in as callables) or
the CLI.
"""
