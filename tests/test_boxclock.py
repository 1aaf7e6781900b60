"""The box clock estimate and the planned write time (aimharder/boxclock.py): pure
arithmetic, driven by a simulated box whose clock is `offset` ahead of ours and
`trip` away, with the Date header's one-second resolution."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from prebookd.aimharder.boxclock import (
    Estimate,
    Sample,
    Unusable,
    corrected,
    estimate,
    next_probe_at,
    parse_date,
    plan,
)
from prebookd.daemon.retries import pause

T = 1_800_000_000.0  # an opening instant (box time), whole second


def probe(sent: float, offset: float, trip: float, jitter: float, rng: random.Random) -> Sample:
    """What a box with this clock answers a HEAD written at our `sent`."""
    out = trip + rng.uniform(0, jitter)
    back = trip + rng.uniform(0, jitter)
    stamped = sent + out + offset  # the box's clock as it handles the request
    return Sample(sent, sent + out + back, float(math.floor(stamped)))


def measure(offset: float, trip: float, jitter: float, probes: int, seed: int) -> Estimate:
    rng = random.Random(seed)
    now = T - 40 + rng.random()
    samples: list[Sample] = []
    for _ in range(probes):
        at = max(now, next_probe_at(samples, now))
        samples.append(probe(at, offset, trip, jitter, rng))
        now = samples[-1].received
    return estimate(samples)


@pytest.mark.parametrize("offset", [-0.3, -0.0123, 0.0, 0.3, 0.9876, -2.5])
@pytest.mark.parametrize("trip", [0.0005, 0.015, 0.04])
def test_estimate_converges_within_5_ms_of_the_offset(offset: float, trip: float) -> None:
    for seed in range(5):
        est = measure(offset, trip, jitter=0.0005, probes=10, seed=seed)
        assert abs(est.offset - offset) < 0.005, (seed, est)
        assert abs(est.trip - trip) < 0.001
        assert est.bound < 0.002
        # The bracket's lower end never lies above the real arrival offset (but for
        # jitter): aimed by it, a request arrives at or after the opening.
        assert est.low <= offset + trip + 0.0005 + 1e-9


def test_ten_probes_halve_one_second_down_to_about_two_ms() -> None:
    widths = []
    rng = random.Random(1)
    samples: list[Sample] = []
    now = T - 30.3
    for _ in range(10):
        samples.append(probe(max(now, next_probe_at(samples, now)), 0.2, 0.01, 0.0, rng))
        now = samples[-1].received
        est = estimate(samples)
        widths.append(est.high - est.low)
    assert widths[0] == pytest.approx(1.0)
    assert widths[-1] < 0.0025
    assert all(b <= a / 2 + 1e-6 for a, b in itertools.pairwise(widths))
    # The probes took a few seconds, not minutes: each waits for its phase of a second.
    assert samples[-1].received - samples[0].sent < 11


def test_missing_unreadable_or_jumping_date_gives_no_estimate() -> None:
    good = Sample(T + 0.2, T + 0.21, T)
    with pytest.raises(Unusable, match="no readable Date"):
        estimate([good, Sample(T + 1.2, T + 1.21, None)])
    with pytest.raises(Unusable, match="contradict"):  # the box's clock jumped 3 s
        estimate([good, Sample(T + 1.2, T + 1.21, T + 4)])
    with pytest.raises(Unusable, match="from our clock"):  # an hour off: not believed
        estimate([Sample(T, T + 0.01, T + 3600)])
    with pytest.raises(Unusable, match="no probe"):
        estimate([])
    assert parse_date(None) is None
    assert parse_date("yesterday") is None
    assert parse_date("Tue, 15 Nov 1994 08:12:31 GMT") == 784887151.0


@pytest.mark.parametrize(
    ("low", "high", "aim", "expected", "mode"),
    [
        # Box 300 ms ahead, 15 ms away: written 315 ms early (+ margin).
        (0.314, 0.316, "arrive", T - 0.314 + 0.0015, "arrive"),
        # Box 300 ms behind: written 285 ms late.
        (-0.286, -0.284, "arrive", T + 0.286 + 0.0015, "arrive"),
        # Box 2 s ahead: never more than max_advance early.
        (2.0, 2.002, "arrive", T - 0.5, "arrive"),
        # Box 2 s behind (or a cache's stale Date): never more than max_advance late.
        (-2.0, -1.998, "arrive", T + 0.5, "arrive"),
        # Bracket too wide to trust (10 ms): at the instant, as with aim=send.
        (0.3, 0.32, "arrive", T, "send"),
        (0.314, 0.316, "send", T, "send"),
    ],
)
def test_planned_time(low: float, high: float, aim: str, expected: float, mode: str) -> None:
    est = Estimate(low, high, rtt=0.03, measured_at=T - 30, samples=10)
    planned = plan(T, est, aim=aim, margin=0.0015, max_advance=0.5, bound_max=0.005)
    assert planned.at == pytest.approx(expected)
    assert planned.aim == mode


def test_planned_time_stays_within_max_advance_of_the_instant() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        low = rng.uniform(-5, 5)
        est = Estimate(low, low + rng.uniform(0, 0.02), rng.uniform(0, 0.2), T, 10)
        max_advance = rng.choice([0.0, 0.1, 0.5, 2.0])
        planned = plan(
            T, est, aim="arrive", margin=0.0015, max_advance=max_advance, bound_max=0.005
        )
        assert T - max_advance <= planned.at <= T + max_advance
    assert plan(T, None, aim="arrive", margin=0.0, max_advance=0.5, bound_max=0.005).at == T


def test_not_open_yet_corrects_the_estimate_for_the_next_instant() -> None:
    # Aimed by a bracket 2.5 ms too high (the probes' timing a little off): written
    # 1 ms before the box opened, by its clock.
    est = Estimate(0.3175, 0.3185, 0.03, T - 60, 10)  # truth: 0.315
    early = T - 0.3175 + 0.0015
    opened = early + 0.035  # the fast retry, one round trip later, found it open
    fixed = corrected(est, T, early=early, opened=opened)
    assert fixed.low <= 0.315 + 1e-6 and fixed.high > 0.315
    assert fixed.bound == pytest.approx(est.bound)  # as tight as before: still aimed
    again = plan(T, fixed, aim="arrive", margin=0.0015, max_advance=0.5, bound_max=0.005)
    assert again.aim == "arrive"
    assert 0 <= again.at + 0.315 - T < 0.005  # arrives 0-5 ms after the opening
    # A "not open yet" the bracket allows (jitter past the margin) only trims its top.
    est = Estimate(0.314, 0.318, 0.03, T - 60, 10)
    fixed = corrected(est, T, early=T - 0.3155, opened=T - 0.3115)
    assert (fixed.low, fixed.high) == (0.314, pytest.approx(0.3155))


def test_not_open_yet_is_retried_fast_near_the_planned_time_only() -> None:
    from prebookd.aimharder.client import Exchange
    from prebookd.aimharder.outcomes import classify_http

    not_open, _ = classify_http(200, b'{"bookState": -4}', insist=False)
    failed, _ = classify_http(500, b"", insist=False)
    ex = Exchange(not_open, None, T, T, 200)
    assert not_open.code == "not_open"
    assert pause(ex, 0.1, fast=(0.004, 0.3), interval=0.05) == 0.004
    assert pause(ex, 0.4, fast=(0.004, 0.3), interval=0.05) == 0.05
    assert pause(Exchange(failed, None, T, T, 500), 0.1, fast=(0.004, 0.3), interval=0.05) == 0.05


def test_a_wrong_instant_or_a_far_answer_never_pushes_a_boxs_aim_late() -> None:
    """ "Not open yet" corrects the box's clock only when the box then opened, and only
    by a little; far off, the box is aimed at our clock until measured again."""
    from prebookd.daemon.aim import AimConfig, Aims, BoxClocks
    from prebookd.daemon.clock import HotWindows

    def clocks_with(est: Estimate) -> BoxClocks:
        clocks = BoxClocks(None, AimConfig(aim="arrive"), hot=HotWindows(), clock=lambda: T)  # type: ignore[arg-type]
        clocks._estimates["box"] = est  # as a measurement leaves it
        return clocks

    def fired(clocks: BoxClocks, answers: list[tuple[float, str]]) -> None:
        aims = Aims(T, clocks)
        aims.fix({"box"})
        aims.saw("box", answers)
        aims.correct()

    est = Estimate(0.0175, 0.0185, 0.03, T - 60, 10)  # truth: 0.015
    planned = T - 0.0175 + 0.0015
    # 1 ms early, then open: aimed 2.5 ms later next time, still aimed.
    clocks = clocks_with(est)
    fired(clocks, [(planned, "not_open"), (planned + 0.035, "booked")])
    again = clocks.plan("box", T + 60)
    assert again.aim == "arrive" and 0 <= again.at - (T + 60 - 0.015) < 0.005
    # Never open in the window (available_at a day off): the clock is not to blame.
    clocks = clocks_with(est)
    fired(clocks, [(planned + k * 0.05, "not_open") for k in range(60)])
    assert clocks.plan("box", T + 60).at == pytest.approx(T + 60 - 0.0175 + 0.0015)
    # Open only a second later: not the probes' timing a little off. Measured again,
    # at our clock meanwhile (never a second late).
    clocks = clocks_with(est)
    fired(clocks, [(planned + 0.99, "not_open"), (planned + 1.0, "booked")])
    assert clocks.plan("box", T + 60).aim == "send"
