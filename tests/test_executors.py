"""The executor that runs jobs in this process behaves like a pool to its callers."""

from __future__ import annotations

import pytest

from medfm.executors import InlineExecutor, make_executor


def test_inline_executor_returns_results_and_keeps_exceptions_in_the_future():
    with make_executor(0) as pool:
        assert isinstance(pool, InlineExecutor)
        assert pool.submit(pow, 2, 10).result() == 1024
        failed = pool.submit(int, "not a number")
        with pytest.raises(ValueError):
            failed.result()


def test_inline_executor_runs_the_initializer_here():
    seen = []
    make_executor(0, seen.append, ("ready",))
    assert seen == ["ready"]
