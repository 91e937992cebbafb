"""Which occurrences the events worker took already: (uid, count) once, in bounded memory."""

import tracemalloc
import uuid

import pytest

from workers.seen import DEFAULT_CAPACITY, SeenOccurrences


def test_a_higher_count_is_a_new_occurrence_the_same_or_a_lower_one_is_not():
    seen = SeenOccurrences()
    assert seen.take("uid-1", 1)
    assert not seen.take("uid-1", 1)
    assert seen.take("uid-1", 3)
    assert not seen.take("uid-1", 2)
    assert seen.taken("uid-1", 3)
    assert not seen.taken("uid-1", 4)
    assert seen.take("uid-2", 1)  # another event entirely
    assert len(seen) == 2


def test_full_generations_rotate_and_the_latest_half_is_always_remembered():
    seen = SeenOccurrences(capacity=10)
    for i in range(23):
        assert seen.take(f"uid-{i}", 1)
        assert len(seen) <= 10
    for i in range(23 - 5, 23):
        assert seen.taken(f"uid-{i}", 1)
        assert not seen.take(f"uid-{i}", 1)
    assert not seen.taken("uid-0", 1)  # forgotten: the memory is bounded


def test_a_uid_taken_again_counts_once_against_the_capacity():
    seen = SeenOccurrences(capacity=4)
    for count in range(1, 50):
        assert seen.take("busy", count)  # a repeating event: one uid, rising counts
    assert seen.take("other", 1)
    assert len(seen) == 2
    assert seen.taken("busy", 49)


def test_a_newer_count_of_a_uid_in_the_older_generation_is_taken_once():
    seen = SeenOccurrences(capacity=4)
    seen.take("a", 1)
    seen.take("b", 1)
    seen.take("c", 1)  # rotates: a, b are in the older generation now
    assert not seen.take("a", 1)
    assert seen.take("a", 2)
    assert not seen.take("a", 2)


def test_generations_older_than_the_horizon_are_retired():
    now = [0.0]
    seen = SeenOccurrences(horizon_s=100.0, clock=lambda: now[0])
    seen.take("old", 1)
    now[0] = 60.0
    seen.expire()
    assert seen.taken("old", 1)
    now[0] = 101.0
    seen.expire()  # the generation holding "old" is the older one now
    assert seen.taken("old", 1)
    seen.take("new", 1)
    now[0] = 202.0
    seen.expire()
    assert not seen.taken("old", 1)
    assert seen.taken("new", 1)


def test_memory_at_full_capacity_stays_under_3_mib():
    uids = [str(uuid.uuid4()) for _ in range(DEFAULT_CAPACITY * 2)]
    tracemalloc.start()
    try:
        seen = SeenOccurrences()
        largest = used = 0
        for i, uid in enumerate(uids):
            seen.take(uid, 1 + i % 3)
            if len(seen) > largest:
                largest = len(seen)
                used = tracemalloc.get_traced_memory()[0]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert largest == DEFAULT_CAPACITY
    assert used < 3 * 2**20, f"{used / 2**20:.2f} MiB for {largest} uids"
    assert peak < 3.5 * 2**20


def test_capacity_below_two_is_refused():
    with pytest.raises(ValueError, match="capacity"):
        SeenOccurrences(capacity=1)
