"""From what the simulator saw and what the rows say to lateness, spread, order.

Two views of every request, kept apart because they can disagree:

- arrival: when its first byte reached the simulator (`RecordedRequest.arrived_at`,
  stamped in `data_received`, before parsing or queueing behind other requests);
- sender: when the sender says it wrote it (`prebookings.written_at`/`lateness_ms`,
  stamped by aiohttp's `on_request_chunk_sent` trace right before the write).

A row's request is its first one for (box, class, member); retries come later and
are not lateness. Rows never sent before the run ended are *censored*: their
lateness is at least `censor_at - instant`, and every statistic they enter is
marked as a lower bound.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bench.stats import summary
from bench.workload import BURST, SINGLE, Row
from prebookd.sim.server import RecordedRequest

ClassKey = tuple[str, str]  # (box subdomain, class session id)
NOT_OPEN_LANG = "ERROR_ANTELACION_CLIENTE"


def book_requests(requests: Iterable[RecordedRequest]) -> list[RecordedRequest]:
    return sorted((r for r in requests if r.path == "/api/book"), key=lambda r: r.seq)


def first_requests(requests: Sequence[RecordedRequest]) -> dict[tuple[str, str, str], float]:
    """(box, class, member) -> arrival of its first request."""
    first: dict[tuple[str, str, str], float] = {}
    for request in requests:
        if request.session_id is None or request.email is None:
            continue
        first.setdefault((request.box, request.session_id, request.email), request.arrived_at)
    return first


def fifo_violations(ordered_rows: Sequence[Row]) -> int:
    """Adjacent pairs, in the order requests went out, where the later one was
    prebooked first: 0 exactly when the order is FIFO by (created_at, id)."""
    return sum(
        1
        for a, b in itertools.pairwise(ordered_rows)
        if (b.created_at, str(b.id)) < (a.created_at, str(a.id))
    )


def measure(
    rows: Sequence[Row],
    requests: Sequence[RecordedRequest],
    kind_of: Mapping[ClassKey, str],
    *,
    censor_at: float | None = None,
) -> dict[str, Any]:
    """Every metric of one approach on one workload; see the module docstring."""
    books = book_requests(requests)
    arrived = first_requests(books)
    by_class: dict[ClassKey, list[Row]] = defaultdict(list)
    for row in rows:
        by_class[(row.box, row.session_id)].append(row)

    def arrival(row: Row) -> float | None:
        return arrived.get((row.box, row.session_id, row.email))

    def late_ms(at: float | None, row: Row) -> tuple[float | None, bool]:
        """(lateness, censored): a row never sent is late by at least censor - instant."""
        if at is not None:
            return (at - row.instant) * 1000, False
        if censor_at is not None:
            return (censor_at - row.instant) * 1000, True
        return None, True

    views: dict[str, dict[str, list[float]]] = {}
    censored: dict[str, Counter[str]] = {}
    spreads: dict[str, list[float]] = {"arrival": [], "sender": []}
    spread_censored: Counter[str] = Counter()
    fifo: Counter[str] = Counter()
    raw: dict[str, list[Any]] = {"arrival_ms": [], "sender_ms": [], "kind": []}
    for view, when in (("arrival", arrival), ("sender", lambda r: r.written_at)):
        groups: dict[str, list[float]] = {"all": [], SINGLE: [], "first_of_burst": []}
        cut: Counter[str] = Counter()
        for key, members in by_class.items():
            kind = kind_of.get(key, SINGLE)
            times = [(when(r), r) for r in members]
            for at, row in times:
                value, lost = late_ms(at, row)
                if value is not None:
                    groups["all"].append(value)
                    cut["all"] += lost
                    if kind == SINGLE:
                        groups[SINGLE].append(value)
                        cut[SINGLE] += lost
            sent = sorted(((at, r) for at, r in times if at is not None), key=lambda t: t[0])
            fifo[view] += fifo_violations([r for _, r in sent])
            if kind != BURST:
                continue
            instant = members[0].instant
            if sent:
                groups["first_of_burst"].append((sent[0][0] - instant) * 1000)
                if len(sent) == len(members):
                    spreads[view].append((sent[-1][0] - sent[0][0]) * 1000)
                elif censor_at is not None:
                    spreads[view].append((censor_at - sent[0][0]) * 1000)
                    spread_censored[view] += 1
            elif censor_at is not None:
                groups["first_of_burst"].append((censor_at - instant) * 1000)
                cut["first_of_burst"] += 1
        views[view] = groups
        censored[view] = cut

    for row in sorted(rows, key=lambda r: (r.instant, r.created_at)):
        at = arrival(row)
        raw["arrival_ms"].append(None if at is None else round((at - row.instant) * 1000, 4))
        raw["sender_ms"].append(
            None if row.written_at is None else round((row.written_at - row.instant) * 1000, 4)
        )
        raw["kind"].append(kind_of.get((row.box, row.session_id), SINGLE))

    opens = {key: members[0].instant for key, members in by_class.items()}
    early_arrivals = sum(
        1
        for r in books
        if r.session_id is not None and r.arrived_at < opens.get((r.box, r.session_id), 0.0)
    )
    return {
        "rows": len(rows),
        "requests": len(books),
        "unsent": sum(1 for r in rows if arrival(r) is None),
        "lateness_ms": {
            view: {
                group: summary(values, censored=censored[view][group])
                for group, values in groups.items()
            }
            for view, groups in views.items()
        },
        "burst_spread_ms": {
            view: summary(values, censored=spread_censored[view])
            for view, values in spreads.items()
        },
        "early": {
            "arrival": early_arrivals,
            "sender": sum(1 for r in rows if r.lateness_ms is not None and r.lateness_ms < 0),
            "not_open_answers": sum(
                1 for r in books if r.answer.get("errorMssgLang") == NOT_OPEN_LANG
            ),
        },
        "fifo_violations": dict(fifo),
        # How long the simulator itself kept requests waiting before handling them:
        # large values say handler-side times would have misjudged the sender.
        "simulator_queue_ms": summary([(r.handled_at - r.arrived_at) * 1000 for r in books]),
        "outcomes": dict(Counter(f"{r.status}:{r.outcome}" for r in rows)),
        "raw": raw,
    }
