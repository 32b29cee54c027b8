"""Mailboxes between ROS callbacks and the worker thread: only the newest item waits.

A camera sends frames faster than a slow machine processes them; keeping
only the newest (and counting what was replaced) keeps the output current
instead of growing a queue.
"""
import threading


class NewestPerKey:
    """The newest item of each key, between callbacks and a worker thread.

    ``put`` replaces an item of the same key that the worker has not taken
    yet and counts it as skipped; ``take`` hands over every pending item at
    once (the consumer mode's face images by id: one batched model call), or
    None once closed.
    """

    def __init__(self):
        self._condition = threading.Condition()
        self._pending: dict = {}
        self._open = False
        self.skipped = 0

    def open(self) -> None:
        with self._condition:
            self._open = True
            self.skipped = 0

    def close(self) -> None:
        """Drop what is pending and make ``take`` return None."""
        with self._condition:
            self._open = False
            self.skipped += len(self._pending)
            self._pending.clear()
            self._condition.notify_all()

    def put(self, key: str, item) -> None:
        with self._condition:
            if key in self._pending:
                self.skipped += 1
            self._pending[key] = item
            self._condition.notify()

    def drop(self, key: str) -> None:
        """Forget a pending item of a key that left (a face id; counted as skipped)."""
        with self._condition:
            if self._pending.pop(key, None) is not None:
                self.skipped += 1

    def take(self) -> dict | None:
        """Wait for items; all pending ones by key, or None once closed."""
        with self._condition:
            self._condition.wait_for(lambda: self._pending or not self._open)
            if not self._open:
                return None
            pending, self._pending = self._pending, {}
            return pending


class NewestFrame(NewestPerKey):
    """A one-frame mailbox: ``put`` replaces a frame the worker has not taken yet (counted as skipped)."""

    def put(self, frame) -> None:
        super().put(None, frame)

    def take(self):
        """Wait for the next frame; None once closed."""
        pending = super().take()
        return None if pending is None else pending[None]
