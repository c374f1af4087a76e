"""When the broker gives freed heap memory back (omnibroker/heap.py), driven with a fake malloc and clock: the trims a
heap's history leads to, without a real process."""
from __future__ import annotations

from doubles import FakeClock, FakeMalloc
from omnibroker.heap import BUSY_MESSAGES, GAIN, Trimmer

MB = 1 << 20


def looks(trimmer: Trimmer, clock: FakeClock, seconds: float, every: float = 5.0,
          messages: list[int] | None = None) -> list[float]:
    """Check every `every` seconds for `seconds`; the times (from the start) at which it trimmed. `messages`: a
    one-item counter of the messages the broker received, raised by the test (None: no count is given)."""
    start, out = clock.now, []
    while clock.now - start < seconds:
        clock.now += every
        if trimmer.check(messages[0] if messages is not None else None):
            out.append(clock.now - start)
    return out


def test_nothing_free_is_never_trimmed():
    malloc, clock = FakeMalloc(free=2 * MB), FakeClock()
    trimmer = Trimmer(malloc=malloc, clock=clock)
    assert looks(trimmer, clock, 600) == [] and malloc.trims == 0


def test_memory_freed_after_a_mid_flood_trim_comes_back():
    """The case a CI run met: a trim in the middle of a flood sees much free; the flood's queues are freed later and the
    free count ends near where it was, so "free grew since the last trim" never fires, with 25 MB resident."""
    malloc, clock = FakeMalloc(free=4 * MB, rss=43 * MB), FakeClock()
    trimmer = Trimmer(malloc=malloc, clock=clock)
    # mid-flood: 40 MB free of transient blocks, of which 10 MB can go back
    malloc.free, malloc.rss, malloc.trimmable = 40 * MB, 100 * MB, 10 * MB
    assert looks(trimmer, clock, 5) == [5] and malloc.rss == 90 * MB
    # the flood grows on, then its queues are freed: glibc's own top-trim gives part back, 44 MB count as free
    malloc.rss = 119 * MB
    assert looks(trimmer, clock, 5) == [5]                  # grown by over 8 MB: trimmed at once
    malloc.free, malloc.rss, malloc.trimmable = 44 * MB, 68 * MB, 25 * MB
    times = looks(trimmer, clock, 60)
    assert times and times[0] <= trimmer.max_interval, times
    assert malloc.rss == 43 * MB


def test_a_heap_that_gives_nothing_back_costs_a_trim_per_max_interval():
    malloc, clock = FakeMalloc(free=30 * MB), FakeClock()
    trimmer = Trimmer(malloc=malloc, clock=clock)
    times = looks(trimmer, clock, 600)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps[:3] == [10, 20, 20] and set(gaps[2:]) == {20}, gaps
    assert len(times) <= 600 / trimmer.max_interval + 2


def test_a_trim_that_gives_back_keeps_the_usual_pace():
    malloc, clock = FakeMalloc(free=30 * MB), FakeClock()
    trimmer = Trimmer(malloc=malloc, clock=clock)
    times = []
    for _ in range(6):                       # a steady leak-and-free: every look finds 2 MB to give back
        malloc.trimmable = 2 * MB
        malloc.rss += 2 * MB
        times += looks(trimmer, clock, 5)
    assert len(times) == 6 and GAIN <= 2 * MB


def test_a_new_flood_ends_a_long_wait():
    malloc, clock = FakeMalloc(free=30 * MB), FakeClock()
    trimmer = Trimmer(malloc=malloc, clock=clock)
    looks(trimmer, clock, 120)               # nothing to give back: the wait is at its longest
    assert trimmer.wait == trimmer.max_interval
    malloc.rss += 20 * MB                    # a flood touched 20 MB more
    malloc.trimmable = 20 * MB
    assert looks(trimmer, clock, 5) == [5] and trimmer.wait == trimmer.interval


def test_a_busy_broker_is_not_trimmed_until_it_is_quiet():
    """What a flood frees is taken again by what follows: trimming then only makes the next messages fault pages in."""
    malloc, clock = FakeMalloc(free=2 * MB), FakeClock()
    trimmer = Trimmer(malloc=malloc, clock=clock)
    messages = [0]
    trimmer.check(messages[0])                          # before the flood: little free, the count taken
    malloc.free, malloc.trimmable = 30 * MB, 20 * MB
    for _ in range(12):                                 # a minute of 10,000 messages per look
        messages[0] += 10 * BUSY_MESSAGES
        assert looks(trimmer, clock, 5, messages=messages) == []
    assert malloc.trims == 0
    messages[0] += BUSY_MESSAGES                        # quiet: at most BUSY_MESSAGES since the last look
    assert looks(trimmer, clock, 5, messages=messages) == [5] and malloc.trims == 1
