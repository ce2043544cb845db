"""How long the remote steps of one load may go without progress: one :class:`Deadline`
per opened checkpoint, shared by every metadata request of it (the index, headers,
sizes and ETags, over HTTP or botocore), their retries and the pauses between them.

A request that completes (or a body chunk received) is progress and moves the deadline
to ``timeout`` seconds from then, as the native reader does per piece of data: a
server that stops answering fails the load about ``timeout`` seconds after its last
byte, however many requests and retries were still to come. Retries pause with the
native reader's jittered exponential backoff (csrc/http_source.cpp), never past the
deadline.

Example:
    >>> d = Deadline(30)
    >>> 29 < d.left() <= 30
    True
"""

from __future__ import annotations

import random
import time

FIRST_BACKOFF_S = 0.05
MAX_BACKOFF_S = 2.0
MAX_FAILURES = 8  # failed attempts in a row before giving up, deadline or not


def retryable_status(status: int) -> bool:
    """Whether an HTTP ``status`` is worth asking again for: 5xx, 408, 429; the one
    Python copy of the native reader's retryable_status (csrc/http_protocol.h), held equal
    to it by tests/test_remote_policy.py.

    Example:
        >>> retryable_status(503), retryable_status(429), retryable_status(404)
        (True, True, False)
    """
    return status >= 500 or status in (408, 429)


def retry_after(value: str | None) -> float:
    """Seconds a Retry-After header asks to wait (delta-seconds; an HTTP-date or
    nothing: 0, the usual backoff), at most an hour, as the native reader reads it."""
    value = (value or "").strip()
    return min(float(value), 3600.0) if value.isdigit() and len(value) <= 18 else 0.0


class Deadline:
    """``timeout`` seconds from now, moved on by :meth:`progress`."""

    def __init__(self, timeout: float):
        self.timeout = float(timeout)
        self._until = time.monotonic() + self.timeout

    def left(self) -> float:
        """Seconds until the deadline (0 once it passed)."""
        return max(0.0, self._until - time.monotonic())

    def expired(self) -> bool:
        return self.left() <= 0

    def progress(self) -> None:
        """Something arrived: the next step again has ``timeout`` seconds."""
        self._until = time.monotonic() + self.timeout

    def pause(self, failures: int, at_least: float = 0.0) -> bool:
        """Sleeps the jittered backoff after ``failures`` failed attempts in a row, or the
        server's Retry-After (``at_least``) if longer, within the deadline. False when no
        attempt should follow (deadline passed, too many, or a Retry-After past it)."""
        if failures >= MAX_FAILURES or self.expired() or at_least > self.left():
            return False
        backoff = min(FIRST_BACKOFF_S * 2 ** (failures - 1), MAX_BACKOFF_S) * random.uniform(0.5, 1.5)
        time.sleep(min(max(backoff, at_least), self.left()))
        return not self.expired()


def as_deadline(timeout) -> Deadline:
    """``timeout`` itself if it is a Deadline, else a new Deadline of that many seconds."""
    return timeout if isinstance(timeout, Deadline) else Deadline(timeout)
