"""The in-order worker of batch scoring's calls stage and of the CSV writer (rifml.in_order.InOrder):
calls run in order in their own thread, few wait, errors surface."""

import threading

import pytest

from rifml.in_order import InOrder


def test_calls_run_in_order_in_one_other_thread():
    done, threads = [], set()

    def step(i):
        threads.add(threading.get_ident())
        done.append(i)

    with InOrder("test-stage", depth=2) as stage:
        for i in range(50):
            stage.submit(step, i)
    assert done == list(range(50))
    assert threads and threading.get_ident() not in threads and len(threads) == 1


def test_an_error_in_the_stage_is_raised_in_the_caller():
    def step(i):
        if i == 3:
            raise ValueError("chunk 3 failed")

    with pytest.raises(ValueError, match="chunk 3 failed"):
        with InOrder("test-stage") as stage:
            for i in range(100):
                stage.submit(step, i)


def test_the_callers_error_wins_and_waiting_calls_are_dropped():
    started = []

    def step(i):
        started.append(i)
        threading.Event().wait(1.0)  # still running when the caller fails

    with pytest.raises(KeyError):
        with InOrder("test-stage", depth=1) as stage:
            stage.submit(step, 0)
            stage.submit(step, 1)
            raise KeyError("caller failed")
    assert 1 not in started  # the waiting call never ran (the first one finished, or never started)


def test_depth_zero_keeps_one_call_in_flight():
    finished = []

    def step(i):
        threading.Event().wait(0.002)
        finished.append(i)

    with InOrder("test-stage", depth=0) as stage:
        for i in range(20):
            stage.submit(step, i)
            # submit returned only once every earlier call was done; call i itself may already be done too
            # (it waits 2 ms, and a loaded machine can hold this thread longer)
            assert finished in (list(range(i)), list(range(i + 1)))
    assert finished == list(range(20))


def test_drain_raises_the_error_of_a_call():
    def step(i):
        if i == 1:
            raise ValueError("call 1 failed")

    with InOrder("test-stage", depth=5) as stage:
        for i in range(3):
            stage.submit(step, i)
        with pytest.raises(ValueError, match="call 1 failed"):
            stage.drain()
