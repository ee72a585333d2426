"""Which errors a build retries, and the retry loop of the steps run without Prefect.

``is_transient`` is the one predicate: the batch uses it to tell a scene's
failure (quarantined) from a hiccup (the whole batch is retried),
``call_with_retries`` and the flow's Prefect tasks (``retry_condition_fn``)
to decide whether to run a step again.
"""
from __future__ import annotations

import errno
import logging
import time
from typing import Callable

log = logging.getLogger("pipelines.build")

RETRIES = 3
BACKOFF_S = 2.0  # first retry after 2 s, then 4 s, 8 s
# errno values that say "try again", not "this input is bad".
_TRANSIENT_ERRNOS = {errno.EAGAIN, errno.EBUSY, errno.EIO, errno.ETIMEDOUT, errno.ECONNRESET,
                     errno.ECONNABORTED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ESTALE}


class TransientBatchError(RuntimeError):
    """A batch hit an error worth retrying; names the scene and the stage."""

    def __init__(self, key: str, stage: str, exc: BaseException):
        self.key, self.stage = key, stage
        super().__init__(f"scene '{key}': stage '{stage}': transient {type(exc).__name__}: {exc}")

    def __reduce__(self):  # pickles (Dask, process pools) without the original exception
        return (_transient_batch_error, (self.key, self.stage, str(self)))


def _transient_batch_error(key: str, stage: str, message: str) -> TransientBatchError:
    err = TransientBatchError.__new__(TransientBatchError)
    err.key, err.stage = key, stage
    RuntimeError.__init__(err, message)
    return err


TRANSIENT_TYPES = (TransientBatchError, ConnectionError, TimeoutError, BlockingIOError, InterruptedError)


def is_transient(exc: BaseException | None) -> bool:
    """True for errors worth retrying (network/disk hiccups, timeouts, a batch
    that hit one), False for errors that say the input or the code is wrong.
    An error raised ``from`` a transient one is transient."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, TRANSIENT_TYPES) or (isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS):
            return True
        seen.add(id(exc))
        exc = exc.__cause__
    return False


def call_with_retries(fn: Callable, *args, retries: int = RETRIES, backoff_s: float = BACKOFF_S, **kwargs):
    """``fn(*args, **kwargs)``, retried up to ``retries`` times after a
    transient error (waits backoff_s, 2*backoff_s, ...); other errors raise."""
    for attempt in range(retries + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if attempt == retries or not is_transient(exc):
                raise
            log.warning("%s: transient %s: %s; retry %d/%d", getattr(fn, "__name__", fn), type(exc).__name__,
                        exc, attempt + 1, retries)
            time.sleep(backoff_s * 2 ** attempt)
