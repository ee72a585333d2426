"""Where ``run_build`` runs a step: the executor protocol, and the serial executor.

An executor is anything with ``submit(fn, *args)`` returning a future with
``result()``: ``concurrent.futures.Executor`` fits, so does a
``dask.distributed.Client`` (and the flow's Prefect task runner adapter).
Completion order comes from, in turn: the ``as_completed`` argument of
``run_build``, the executor's own ``as_completed`` method, ``concurrent.futures.
as_completed`` for standard futures, else the futures' ``add_done_callback``.
``SerialExecutor`` (the default) runs each call in this process, in order, when
its result is asked for (so batch i is committed before batch i+1 is built).
"""
from __future__ import annotations

import concurrent.futures as cf
import queue
from typing import Any, Callable, Iterable, Iterator, Optional, Protocol


class Executor(Protocol):
    def submit(self, fn: Callable, /, *args: Any) -> Any: ...


class _Deferred:
    """A future of ``SerialExecutor``: runs its call the first time ``result()`` is asked."""

    def __init__(self, fn: Callable, args: tuple, kwargs: dict):
        self._call: Optional[tuple] = (fn, args, kwargs)
        self._value: Any = None
        self._error: BaseException | None = None

    def result(self, timeout: float | None = None) -> Any:
        if self._call is not None:
            fn, args, kwargs = self._call
            self._call = None
            try:
                self._value = fn(*args, **kwargs)
            except Exception as exc:
                self._error = exc
        if self._error is not None:
            raise self._error
        return self._value


class SerialExecutor:
    """In this process, one call at a time, in submission order."""

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> _Deferred:
        return _Deferred(fn, args, kwargs)

    @staticmethod
    def as_completed(futures: Iterable[_Deferred]) -> Iterator[_Deferred]:
        return iter(list(futures))


def as_completed_any(futures: Iterable[Any]) -> Iterator[Any]:
    """Futures in completion order: ``concurrent.futures.as_completed`` for
    standard futures, else through ``add_done_callback`` (Dask futures)."""
    futures = list(futures)
    if all(isinstance(f, cf.Future) for f in futures):
        yield from cf.as_completed(futures)
        return
    done: queue.Queue = queue.Queue()
    for f in futures:
        f.add_done_callback(done.put)
    for _ in futures:
        yield done.get()
