"""The thread primitives: each job once, results and errors where they are asked for,
nothing left running, and (marked ``threading``) what runs beside what."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError

import pytest

from salience import runtime
from salience.concurrency import helper_thread, spare_workers, take_turns, worker_pool

WAIT = 30  # seconds; only ever reached when the behaviour under test is broken


def _salience_threads():
    return [t for t in threading.enumerate() if t.name.startswith("salience")]


def _wait_until(condition):
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition never became true")
        time.sleep(0.001)


# --------------------------------------------------------------------------- worker_pool


@pytest.mark.parametrize("workers", [0, 1, 2, 3])
def test_pool_runs_each_job_once_and_gives_its_result(workers):
    runs = []
    lock = threading.Lock()

    def square(i):
        with lock:
            runs.append(i)
        return i * i

    with worker_pool(workers, "salience-test") as pool:
        jobs = [pool.submit(square, i) for i in range(20)]
        # Ask from the back, as XRAI does, so the caller claims what workers have not reached.
        results = [job.result() for job in reversed(jobs)][::-1]
        assert [job.result() for job in jobs] == results  # asking again runs nothing
    assert results == [i * i for i in range(20)]
    assert sorted(runs) == list(range(20))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_jobs_error_is_raised_where_its_result_is_asked_for(workers):
    def fail():
        raise KeyError("job failed")

    with worker_pool(workers, "salience-test") as pool:
        job, fine = pool.submit(fail), pool.submit(lambda: 5)
        with pytest.raises(KeyError, match="job failed"):
            job.result()
        assert fine.result() == 5


@pytest.mark.parametrize("workers", [0, 1, 2, 4])
def test_jobs_waiting_for_a_shared_job_finish_and_it_runs_once(workers):
    prepared = []

    def prepare():
        prepared.append(1)
        return 10

    with worker_pool(workers, "salience-test") as pool:
        shared = pool.submit(prepare)
        jobs = [pool.submit(lambda i=i: shared.result() + i) for i in range(6)]
        assert [job.result() for job in reversed(jobs)] == [15, 14, 13, 12, 11, 10]
    assert prepared == [1]


def test_spare_workers_follow_the_usable_cores(monkeypatch):
    monkeypatch.setattr(runtime, "usable_cores", lambda: 8)
    assert spare_workers(24, keep_free=1) == 7
    assert spare_workers(3, keep_free=1) == 3
    assert spare_workers(100, at_most=4) == 4
    monkeypatch.setattr(runtime, "usable_cores", lambda: 1)
    assert spare_workers(24, keep_free=1) == 1  # always at least one


@pytest.mark.threading
def test_without_workers_a_job_runs_in_the_thread_asking_for_it_when_asked():
    ran = []
    with worker_pool(0, "salience-test") as pool:
        job = pool.submit(lambda: ran.append(threading.current_thread()) or 3)
        assert ran == [] and not job.done()
        assert job.result() == 3
    assert ran == [threading.current_thread()]


@pytest.mark.threading
def test_the_caller_claims_a_job_no_worker_has_started():
    release, ran_in = threading.Event(), {}

    def busy():
        ran_in["busy"] = threading.current_thread()
        return release.wait(timeout=WAIT)

    with worker_pool(1, "salience-test") as pool:
        blocking = pool.submit(busy)  # keeps the only worker busy
        claimed = pool.submit(lambda: ran_in.setdefault("claimed", threading.current_thread()))
        claimed.result()
        release.set()
        assert blocking.result() is True
    assert ran_in["claimed"] is threading.current_thread()


@pytest.mark.threading
def test_leaving_the_pool_drops_unstarted_jobs_and_waits_for_running_ones():
    ran, started, later = [], threading.Event(), []

    def first():
        started.set()
        _wait_until(lambda: len(later) == 5 and all(job.done() for job in later))  # dropped
        ran.append("first")

    with pytest.raises(RuntimeError, match="caller failed"):
        with worker_pool(1, "salience-test") as pool:
            running = pool.submit(first)
            later.extend(pool.submit(ran.append, i) for i in range(5))
            assert started.wait(timeout=WAIT)
            raise RuntimeError("caller failed")
    running.result()  # finished, without error
    assert ran == ["first"]
    for job in later:
        with pytest.raises(CancelledError):
            job.result()
    assert _salience_threads() == []


# --------------------------------------------------------------------------- take_turns


@pytest.mark.parametrize("lanes", [1, 2, 3])
def test_take_turns_runs_every_step_once_in_order_per_lane(lanes):
    events = []
    lock = threading.Lock()

    def record(kind):
        def step(lane, turn):
            with lock:
                events.append((kind, lane, turn))
        return step

    take_turns(4, lanes, record("caller"), record("helper"), "salience-test")
    for lane in range(lanes):
        mine = [(kind, turn) for kind, la, turn in events if la == lane]
        assert mine == [(kind, turn) for turn in range(4) for kind in ("caller", "helper")]
    assert _salience_threads() == []


@pytest.mark.parametrize("where", ["caller", "helper"])
@pytest.mark.parametrize("lanes", [1, 2])
def test_take_turns_stops_within_one_turn_of_an_error(where, lanes):
    calls = []

    def in_caller(lane, turn):
        calls.append((lane, turn))
        if where == "caller" and (lane, turn) == (lanes - 1, 1):
            raise KeyError("caller step failed")

    def on_helper(lane, turn):
        if where == "helper" and (lane, turn) == (0, 1):
            raise KeyError("helper step failed")

    with pytest.raises(KeyError, match=f"{where} step failed"):
        take_turns(50, lanes, in_caller, on_helper, "salience-test")
    assert max(turn for _, turn in calls) <= 2
    assert _salience_threads() == []


@pytest.mark.threading
def test_a_lanes_helper_step_runs_beside_the_next_lanes_caller_step():
    started = [threading.Event() for _ in range(3)]  # lane 1's caller step of each turn
    saw = []

    def in_caller(lane, turn):
        if lane == 1:
            started[turn].set()

    def on_helper(lane, turn):
        if lane == 0:
            saw.append(started[turn].wait(timeout=WAIT))
            saw.append(threading.current_thread() is not threading.main_thread())

    take_turns(3, 2, in_caller, on_helper, "salience-test")
    assert saw == [True] * 6


@pytest.mark.threading
def test_one_lane_runs_in_the_callers_thread():
    threads = set()
    take_turns(3, 1, lambda lane, turn: threads.add(threading.current_thread()),
               lambda lane, turn: threads.add(threading.current_thread()), "salience-test")
    assert threads == {threading.current_thread()}


# --------------------------------------------------------------------------- helper_thread


@pytest.mark.threading
def test_helper_thread_runs_jobs_in_order_on_one_other_thread():
    order, threads = [], set()

    def job(i):
        order.append(i)
        threads.add(threading.current_thread())

    with helper_thread("salience-test") as helper:
        futures = [helper.submit(job, i) for i in range(10)]
        for future in futures:
            future.result()
    assert order == list(range(10))
    assert len(threads) == 1 and threading.current_thread() not in threads
    assert _salience_threads() == []

