"""One background thread that runs submitted calls in order, a bounded number waiting.

Batch scoring's calls stage (:func:`rifml.scoring.score_file`) and the CSV writer
(:class:`rifml.io.writer.AtomicCsvWriter`) both hand work to a thread of their own so
that it overlaps the caller's next chunk, keep memory flat by letting only a few chunks
wait, and surface an error of that thread in the caller. This is that mechanism, once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType


class InOrder:
    """Run submitted calls one after another in a thread of their own, at most ``depth`` waiting.

    ``submit`` returns at once unless ``depth`` calls wait besides the running one (then it
    waits for the oldest): ``depth=0`` keeps one call in flight. An error of a call is raised
    at a later ``submit``, at ``drain`` or on leaving the ``with`` block; when the block is
    already failing, calls not yet started are dropped and the block's own error is the one
    raised. The thread starts with the first call.
    """

    def __init__(self, name: str, depth: int = 1):
        self.name = name
        self.depth = depth
        self._pending: deque[Future] = deque()
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> "InOrder":
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.name)
        return self

    def submit(self, function: Callable, *args) -> None:
        while len(self._pending) > self.depth:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(function, *args))

    def drain(self) -> None:
        """Wait for every submitted call; raise the first error among them."""
        while self._pending:
            self._pending.popleft().result()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc_type is None:
                self.drain()
                return
            for future in self._pending:  # already failing: drop what has not started
                future.cancel()
            while self._pending:
                future = self._pending.popleft()
                if not future.cancelled():
                    future.exception()  # waits; the error is dropped, the block's own is reported
        finally:
            self._pool.shutdown(wait=True)
