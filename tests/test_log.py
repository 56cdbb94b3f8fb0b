# SPDX-License-Identifier: MIT
"""Logging: levels, destinations and the size-capped log file."""

from __future__ import annotations

import logging
import os

import pytest

from passt_py.config import log as plog
from passt_py.config.log import TRACE, CappedFileHandler, setup_logging, trace_enabled


@pytest.fixture(autouse=True)
def _restore_logger():
    """Leave the passt_py logger as it was for other tests."""
    logger = logging.getLogger(plog.ROOT)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    for h in list(logger.handlers):
        logger.removeHandler(h)
        if h not in saved[0]:
            h.close()
    for h in saved[0]:
        logger.addHandler(h)
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def test_trace_is_below_debug():
    """TRACE is a named level under DEBUG."""
    assert TRACE < logging.DEBUG and logging.getLevelName(TRACE) == "TRACE"


def test_trace_enabled_only_with_trace():
    """trace_enabled() is false under -d and true under --trace."""
    setup_logging(foreground=True, debug=True)
    assert not trace_enabled()
    setup_logging(foreground=True, trace=True)
    assert trace_enabled()


def test_quiet_keeps_warnings_only():
    """-q drops info but keeps warnings."""
    logger = setup_logging(foreground=True, quiet=True)
    assert not logger.isEnabledFor(logging.INFO) and logger.isEnabledFor(logging.WARNING)


def test_foreground_logs_to_stderr(capsys):
    """In the foreground messages reach stderr."""
    setup_logging(foreground=True)
    logging.getLogger("passt_py.test").info("hello stderr")
    assert "hello stderr" in capsys.readouterr().err


def test_log_file_receives_messages(tmp_path):
    """-l writes messages to the file."""
    path = tmp_path / "l.log"
    setup_logging(foreground=False, log_file=str(path))
    logging.getLogger("passt_py.test").warning("into the file")
    assert "into the file" in path.read_text()


def _fill(handler: CappedFileHandler, count: int) -> None:
    """Emit ``count`` numbered records through ``handler``."""
    handler.setFormatter(logging.Formatter("%(message)s"))
    for i in range(count):
        handler.emit(logging.LogRecord("t", logging.INFO, __file__, 1, "line %06d xxxxxxxxxxxxxxxx", (i,), None))


def test_capped_file_never_exceeds_cap(tmp_path):
    """However much is logged, the file stays within --log-size."""
    path = tmp_path / "cap.log"
    handler = CappedFileHandler(str(path), 4096)
    _fill(handler, 2000)
    handler.close()
    assert os.path.getsize(path) <= 4096


def test_capped_file_keeps_newest_whole_lines(tmp_path):
    """After cutting, the file holds the newest records as whole, consecutive lines."""
    path = tmp_path / "cap.log"
    handler = CappedFileHandler(str(path), 4096)
    _fill(handler, 2000)
    handler.close()
    lines = path.read_text().splitlines()
    numbers = [int(line.split()[1]) for line in lines]
    assert all(line.startswith("line ") for line in lines)
    assert numbers[-1] == 1999 and numbers == list(range(numbers[0], 2000))


def test_capped_file_truncates_at_start(tmp_path):
    """An old log file is started afresh, as passt does."""
    path = tmp_path / "old.log"
    path.write_text("stale\n")
    CappedFileHandler(str(path), 4096).close()
    assert path.read_text() == ""


def test_rate_limited_logs_a_burst_then_counts_the_rest() -> None:
    """Per-packet warnings: a burst per interval, then the suppressed count on the next one."""
    import logging as _logging

    from passt_py.config.log import RateLimited
    now = [100.0]
    records: list[str] = []

    class Keep(_logging.Handler):
        def emit(self, record: _logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = _logging.getLogger("passt_py.test_rate_limited")
    logger.setLevel(_logging.INFO)
    logger.propagate = False
    handler = Keep()
    logger.addHandler(handler)
    try:
        limited = RateLimited(logger, interval=1.0, burst=3, clock=lambda: now[0])
        sent = [limited.warning("bad chain %d", i) for i in range(10)]
        assert sent == [True] * 3 + [False] * 7
        assert records == ["bad chain 0", "bad chain 1", "bad chain 2"]
        now[0] += 1.0
        assert limited.warning("bad chain %d", 10)
        assert records[-1] == "bad chain 10 (7 similar messages suppressed)"
    finally:
        logger.removeHandler(handler)
