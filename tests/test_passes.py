"""PassRunner: once per loop pass, in one long-lived greenlet."""

import gevent

from chatp2p_core.passes import PassRunner
from poll import wait_for


def test_pokes_coalesce_into_one_pass_in_one_greenlet():
    runs = []
    runner = PassRunner(lambda: runs.append(gevent.getcurrent()), "test")
    for _ in range(5):
        runner.poke()
    assert runs == []  # nothing until this greenlet yields
    gevent.sleep(0)
    assert len(runs) == 1
    for _ in range(3):
        runner.poke()
        gevent.sleep(0)
    assert len(runs) == 4 and len(set(map(id, runs))) == 1  # the same greenlet every pass
    assert not runner.pending
    runner.stop()


def test_a_poke_during_a_pass_gets_another_pass_and_work_may_wait():
    runs = []

    def work():
        runs.append(len(runs))
        if len(runs) == 1:
            gevent.sleep(0.01)   # work may wait
            runner.poke()        # more became due meanwhile

    runner = PassRunner(work, "test")
    runner.poke()
    wait_for(lambda: len(runs) >= 2, 5, "the second pass", sleep=gevent.sleep)
    gevent.sleep(0)  # a third pass, were one pending, would run here
    assert runs == [0, 1] and not runner.pending
    runner.stop()


def test_a_failing_pass_is_logged_and_the_runner_goes_on(caplog):
    runs = []

    def work():
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("boom")

    runner = PassRunner(work, "flaky")
    runner.poke()
    gevent.sleep(0)
    runner.poke()
    gevent.sleep(0)
    assert len(runs) == 2
    assert "flaky pass failed" in caplog.text
    runner.stop()
    runner.poke()  # after stop, a poke starts a fresh greenlet (late work is not lost)
    gevent.sleep(0)
    assert len(runs) == 3
    runner.stop()
