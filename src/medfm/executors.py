"""Where independent jobs run: in this process, or in a pool of fresh processes.

Both are ``concurrent.futures.Executor``s, so callers submit jobs and read futures the same way; any other
executor (a cluster scheduler's) can be passed where these are.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any


class InlineExecutor(Executor):
    """Runs each job when it is submitted, in this process (no pickling, exceptions kept in the future)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as err:  # the caller sees it on .result(), as with a pool
            future.set_exception(err)
        return future


def one_thread() -> None:
    """A worker initializer: one torch thread per process, so ``workers`` processes share the cores."""
    import torch  # here, so a pool that never runs torch does not import it

    torch.set_num_threads(1)


def make_executor(workers: int, initializer: Callable[..., None] | None = None, initargs=()) -> Executor:
    """``workers`` spawned processes, or this process when ``workers`` is 0.

    Spawned rather than forked: a forked child inherits torch's thread pools and locks mid-state.
    """
    if workers <= 0:
        if initializer is not None:
            initializer(*initargs)
        return InlineExecutor()
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=initializer, initargs=initargs)
