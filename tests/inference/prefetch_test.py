"""inference.prefetch: order, the bound on items made ahead, errors, early close."""

import gc
import threading
import time

import pytest

from dinolg_jax.inference import prefetch


def _wait_for(cond, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.001)
    return cond()


def test_order_and_bounded_lead():
    made = []

    def source():
        for i in range(30):
            made.append(i)
            yield i

    for depth in (1, 3):
        made.clear()
        it = prefetch.Prefetcher(source(), depth=depth)
        taken = []
        for item in it:
            taken.append(item)
            # The producer runs ahead while the consumer works, by `depth` items at most.
            expected = min(depth, 30 - len(taken))
            assert _wait_for(lambda: len(made) - len(taken) == expected)  # noqa: B023
            time.sleep(0.001)
            assert len(made) - len(taken) == expected
        assert taken == list(range(30))
    with pytest.raises(ValueError, match="depth"):
        prefetch.Prefetcher([], depth=0)


def test_source_errors_are_raised_in_place_and_end_the_iteration():
    def source():
        yield 1
        yield 2
        raise KeyError("broken")

    it = prefetch.Prefetcher(source())
    assert [next(it), next(it)] == [1, 2]
    with pytest.raises(KeyError, match="broken"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def test_timed_calls_keep_going_after_a_failure():
    def fail():
        raise OSError("unreadable")

    out = list(prefetch.Prefetcher(prefetch.timed_calls([lambda: "a", fail, lambda: "c"])))
    assert [v for v, _, _ in out] == ["a", None, "c"]
    assert out[0][1] is None and isinstance(out[1][1], OSError)
    assert all(t >= 0 for _, _, t in out)


def test_close_and_abandoning_stop_the_thread():
    def endless():
        i = 0
        while True:
            yield i
            i += 1

    before = threading.active_count()
    it = prefetch.Prefetcher(endless(), depth=2)
    assert next(it) == 0
    it.close()
    it = prefetch.Prefetcher(endless(), depth=2)
    next(it)
    del it  # abandoned: collected, its thread stopped
    gc.collect()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == before
