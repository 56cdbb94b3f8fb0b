# SPDX-License-Identifier: MIT
"""The event loop: fd callbacks, timers in deadline order, deferred work once per batch."""
import logging
import os

import pytest

from passt_py.loop import IN, EventLoop


def test_fd_callback_runs_when_readable():
    """A readable fd calls its callback with the event mask."""
    loop = EventLoop()
    r, w = os.pipe()
    seen = []
    loop.add(r, IN, lambda mask: (seen.append(mask), os.read(r, 10), loop.stop()))
    os.write(w, b"x")
    loop.run()
    assert seen and seen[0] & IN
    os.close(r), os.close(w), loop.close()


def test_timers_fire_in_deadline_order_and_cancel_works():
    """Timers run by deadline; a cancelled one never runs."""
    loop = EventLoop()
    order = []
    loop.call_later(0.02, lambda: order.append("b"))
    loop.call_later(0.01, lambda: order.append("a"))
    loop.call_later(0.015, lambda: order.append("x")).cancel()
    loop.call_later(0.03, loop.stop)
    loop.run()
    assert order == ["a", "b"]
    loop.close()


def test_exception_in_handler_does_not_stop_loop(caplog: pytest.LogCaptureFixture) -> None:
    """A failing handler is logged (once, at ERROR, with the handler and its traceback); the
    loop keeps serving."""
    loop = EventLoop()
    ran = []

    def bad():
        raise RuntimeError("boom")

    loop.call_later(0, bad)
    loop.call_later(0.01, lambda: (ran.append(1), loop.stop()))
    with caplog.at_level(logging.ERROR, logger="passt_py.loop"):
        loop.run()
    assert ran == [1]
    errors = [r for r in caplog.records if r.name == "passt_py.loop"]
    assert len(errors) == 1, caplog.text
    assert errors[0].levelno == logging.ERROR
    assert errors[0].getMessage().startswith("unhandled error in event handler ")
    assert "bad" in errors[0].getMessage()               # names the handler that failed
    assert errors[0].exc_info is not None
    assert errors[0].exc_info[0] is RuntimeError and str(errors[0].exc_info[1]) == "boom"
    loop.close()


def test_deferred_work_runs_once_after_batch():
    """Deferred callbacks run after the events of the same iteration."""
    loop = EventLoop()
    calls = []
    loop.call_later(0, lambda: (calls.append("timer"), loop.defer(lambda: calls.append("deferred"))))
    loop.run_once(0.05)
    assert calls == ["timer", "deferred"]
    loop.close()
