"""BuildSlots: the broker-wide build slots (omnibroker/workers.py)."""
from omnibroker.workers import BuildSlots


def make(capacity: int):
    granted: list[tuple[bytes, str]] = []
    return BuildSlots(capacity, lambda identity, token: granted.append((identity, token))), granted


def test_slots_are_granted_in_arrival_order():
    slots, granted = make(1)
    for i in range(5):
        slots.acquire(f"t{i}", b"w%d" % i)
    assert granted == [(b"w0", "t0")]
    for i in range(4):
        slots.release(f"t{i}")
    assert [t for _, t in granted] == ["t0", "t1", "t2", "t3", "t4"]


def test_capacity_is_never_exceeded():
    slots, granted = make(2)
    for i in range(4):
        slots.acquire(f"t{i}", b"w%d" % i)
    assert [t for _, t in granted] == ["t0", "t1"]
    assert len(slots.holders) == 2


def test_a_dropped_worker_releases_what_it_holds_and_leaves_the_queue():
    slots, granted = make(1)
    slots.acquire("a1", b"A")
    slots.acquire("b1", b"B")
    slots.acquire("a2", b"A")
    slots.acquire("c1", b"C")
    slots.release_worker(b"A")
    assert [t for _, t in granted] == ["a1", "b1"]
    slots.release("b1")
    assert [t for _, t in granted] == ["a1", "b1", "c1"]      # a2 left with its worker
    assert list(slots.waiting) == []


def test_a_token_released_twice_frees_one_slot_only():
    slots, granted = make(1)
    slots.acquire("t1", b"A")
    slots.acquire("t2", b"B")
    slots.acquire("t3", b"C")
    slots.release("t1")
    slots.release("t1")
    assert [t for _, t in granted] == ["t1", "t2"]
    assert set(slots.holders) == {"t2"}


def test_a_waiting_token_cancelled_is_never_granted():
    slots, granted = make(1)
    slots.acquire("t1", b"A")
    slots.acquire("t2", b"B")
    slots.acquire("t3", b"C")
    slots.release("t2")             # the worker stopped while its build was queued
    slots.release("t1")
    assert [t for _, t in granted] == ["t1", "t3"]


def test_asking_again_for_a_waiting_or_held_token_changes_nothing():
    slots, granted = make(1)
    slots.acquire("t1", b"A")
    slots.acquire("t2", b"B")
    slots.acquire("t1", b"A")       # a worker re-asks (it cannot tell a restarted broker from a slow one)
    slots.acquire("t2", b"B")
    slots.acquire("t3", b"C")
    assert [t for _, t in granted] == ["t1"]
    assert [t for t, _ in slots.waiting] == ["t2", "t3"]
    slots.release("t1")
    slots.release("t2")
    assert [t for _, t in granted] == ["t1", "t2", "t3"]
