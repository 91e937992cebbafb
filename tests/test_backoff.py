"""The backoff policy: delays as values (no sleeping), attempt counting, stable-run reset."""

import threading
import time

import pytest

from workers.backoff import INTAKE_BACKOFF, RESTART_BACKOFF, Attempts, Backoff


def test_intake_policy_is_2s_doubling_to_64s():
    assert [INTAKE_BACKOFF.nominal(n) for n in range(8)] == [2, 4, 8, 16, 32, 64, 64, 64]


def test_restart_policy_is_half_second_to_30s():
    assert RESTART_BACKOFF.nominal(0) == 0.5
    assert RESTART_BACKOFF.nominal(5) == 16
    assert RESTART_BACKOFF.nominal(6) == 30


def test_huge_attempt_numbers_stay_at_the_cap():
    # An intake down for days: float overflow of factor**n must not happen.
    assert INTAKE_BACKOFF.nominal(10**6) == 64
    assert INTAKE_BACKOFF.delay(10**6, lambda: 0.0) == 64


def test_jitter_only_shortens_within_the_fraction():
    policy = Backoff(base_s=10, factor=2, cap_s=100, jitter=0.25)
    assert policy.delay(0, lambda: 0.0) == 10
    assert policy.delay(0, lambda: 1.0) == pytest.approx(7.5)
    assert policy.delay(4, lambda: 0.5) == pytest.approx(100 * (1 - 0.125))
    delays = [policy.delay(2) for _ in range(500)]
    assert all(30 <= d <= 40 for d in delays)
    assert max(delays) - min(delays) > 5  # it really is random


def test_no_jitter_and_constant_policies():
    assert Backoff(base_s=1, factor=1, cap_s=5, jitter=0).delay(50) == 1
    assert Backoff(base_s=0, factor=2, cap_s=5, jitter=0).delay(3) == 0
    assert Backoff(base_s=9, factor=2, cap_s=5, jitter=0).delay(0) == 5


@pytest.mark.parametrize(
    "kwargs",
    [{"base_s": -1}, {"cap_s": -1}, {"factor": 0.5}, {"jitter": 1.5}, {"jitter": -0.1}],
)
def test_invalid_policies_are_refused(kwargs):
    with pytest.raises(ValueError, match="backoff"):
        Backoff(**kwargs)


def test_attempts_count_and_reset():
    attempts = Attempts(Backoff(base_s=1, factor=3, cap_s=100, jitter=0))
    assert [attempts.next_delay() for _ in range(4)] == [1, 3, 9, 27]
    assert attempts.count == 4
    attempts.reset()
    assert attempts.count == 0
    assert attempts.next_delay() == 1


def test_attempts_reset_after_a_stable_run():
    now = [1000.0]
    attempts = Attempts(
        Backoff(base_s=0.5, factor=2, cap_s=30, jitter=0), stable_after_s=60, clock=lambda: now[0]
    )
    attempts.started()
    now[0] += 5  # crashed quickly
    assert attempts.next_delay() == 0.5
    attempts.started()
    now[0] += 5
    assert attempts.next_delay() == 1.0
    attempts.started()
    now[0] += 61  # ran long enough: the next crash starts from the base again
    assert attempts.next_delay() == 0.5


def test_wait_returns_early_when_stopped():
    stop = threading.Event()
    stop.set()
    attempts = Attempts(Backoff(base_s=30, jitter=0))
    started = time.monotonic()
    assert attempts.wait(stop) is True
    assert time.monotonic() - started < 5
    assert attempts.count == 1


def test_wait_sleeps_the_delay_when_not_stopped():
    attempts = Attempts(Backoff(base_s=0.05, jitter=0))
    started = time.monotonic()
    assert attempts.wait(threading.Event()) is False
    assert time.monotonic() - started >= 0.045
