"""One of this package's ROS executables (``python -m wscfer_ros.<module>``) in a child process.

Used by the demo, the tests and the node benchmark: started with its ROS
arguments, its output in a log file or the parent's, stopped the way Ctrl-C
stops it (the executables exit cleanly on SIGINT and SIGTERM), and killed
only when it does not exit in time.
"""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path


class ChildProcess:
    def __init__(self, module: str, ros_args: list[str], log_path: Path | None = None,
                 env: dict[str, str] | None = None):
        self.log_path = log_path
        self._log = open(log_path, "wb") if log_path else None
        self.process = subprocess.Popen([sys.executable, "-m", f"wscfer_ros.{module}", "--ros-args", *ros_args],
                                        stdout=self._log, stderr=subprocess.STDOUT if self._log else None,
                                        env=env)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def running(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        """What it has written so far (with a log file; empty when its output is the parent's)."""
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def wait(self, timeout: float) -> int:
        """Its exit status; raises ``subprocess.TimeoutExpired`` if it is still running after ``timeout``."""
        status = self.process.wait(timeout)
        if self._log:
            self._log.close()
        return status

    def stop(self, timeout: float, signum: int = signal.SIGINT) -> int | None:
        """Send ``signum`` and return the exit status; None when it had to be killed after ``timeout`` s."""
        if self.running():
            self.process.send_signal(signum)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.wait(timeout)
            return None
