"""Handlers that the tests of the workflows do not reach directly."""

from __future__ import annotations

import platform
from unittest.mock import MagicMock

import pytest
from ignite.engine import Engine

from scripts.handlers import ReleaseFreedMemory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_freed_memory_is_released_every_n_iterations_and_at_the_end():
    handler = ReleaseFreedMemory(every=8)
    assert handler.trim is not None
    assert handler.trim(0) in (0, 1)  # the real call: 1 when memory was released
    calls = []
    handler.trim = lambda pad: calls.append(pad)
    engine = Engine(lambda engine, batch: None)
    handler.attach(engine)
    engine.run(range(20), max_epochs=1)
    assert len(calls) == 3  # iterations 8 and 16, then completion


def test_every_zero_attaches_nothing():
    engine, handler = Engine(lambda engine, batch: None), ReleaseFreedMemory(every=0)
    handler.attach(engine)
    assert not engine.has_event_handler(handler)


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_is_a_bar_on_a_terminal_and_plain_lines_elsewhere(terminal, monkeypatch, caplog):
    import logging
    import sys

    import scripts.handlers
    from scripts.handlers import ConsoleProgress

    bars = []
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    monkeypatch.setattr(scripts.handlers, "ProgressBar", lambda **kwargs: bars.append(kwargs) or MagicMock())
    engine = Engine(lambda engine, batch: None)
    ConsoleProgress("patches", every_seconds=0).attach(engine)
    with caplog.at_level(logging.INFO, logger="scripts.handlers"):
        engine.run(range(3), max_epochs=1)
    lines = [r.getMessage() for r in caplog.records if r.name == "scripts.handlers"]
    if terminal:
        assert bars == [{"desc": "patches", "persist": False}] and lines == []
    else:
        assert not bars
        assert lines == ["patches: 1/3 batches (33 %)", "patches: 2/3 batches (66 %)", "patches: 3/3 batches (100 %)"]
