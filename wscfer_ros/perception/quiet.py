"""What C and C++ libraries write straight to file descriptor 2, caught so that it can be sorted.

MediaPipe, OpenCV and FFmpeg log to stderr below Python, where no Python
setting reaches; around the calls that do, the descriptor is pointed at a
temporary file and the caller decides what of it the user sees.
"""
import os
import sys
import tempfile
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def captured_stderr() -> Iterator[list[bytes]]:
    """Run the block with file descriptor 2 captured; the yielded list holds its lines afterwards.

    Python's own stderr writes in the block are captured too (it is flushed
    at both ends), so nothing is lost, only held back.
    """
    lines: list[bytes] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines += captured.read().splitlines(keepends=True)


def pass_on(lines: list[bytes]) -> None:
    """Write captured lines to file descriptor 2, where they were going."""
    if lines:
        os.write(2, b"".join(lines))
