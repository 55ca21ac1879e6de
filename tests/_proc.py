"""Run the real `farine` command in a subprocess and follow its log, as a user would."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Final

APPS: Final = Path(__file__).parent / "apps"
ROOT: Final = Path(__file__).parent.parent


class FarineProcess:
    """`python -m farine ARGS...` (or `python COMMAND...`) started in `cwd`, its stderr
    read line by line."""

    def __init__(
        self,
        *args: str,
        cwd: Path = APPS,
        env: dict[str, str] | None = None,
        command: list[str] | None = None,
        venv: Path | None = None,
    ) -> None:
        environ = {**os.environ, **(env or {})}
        environ.setdefault("FARINE_INI", "")
        if venv is None:
            # The project root first: the subprocess imports this checkout's farine.
            environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(cwd)])
            argv = [sys.executable, *(command or ["-m", "farine", *args])]
        else:
            # As a user whose virtual environment is active: its `farine`, nothing else.
            environ = activated(venv, environ)
            argv = [str(venv / "bin" / "farine"), *args]
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 20.0) -> str:
        """Return the first new log line matching `pattern`; fail after `timeout` seconds."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern!r}; got:\n" + self.output)
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(
                    f"process exited before a line matching {pattern!r}:\n" + self.output
                )
            self.lines.append(line)
            if regex.search(line):
                return line

    def expect(self, pattern: str, timeout: float = 20.0) -> str:
        """Like `wait_for`, but also accept a line already read."""
        regex = re.compile(pattern)
        for line in self.lines:
            if regex.search(line):
                return line
        return self.wait_for(pattern, timeout)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the exit code, then collect the rest of the output."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("process did not exit in time:\n" + self.output) from None
        self._reader.join(timeout=5)
        self._close()
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return code

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def kill(self) -> None:
        """Make sure the process is gone and its pipe closed (for `finally:` blocks)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
        self._close()

    def _close(self) -> None:
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()


def activated(venv: Path, environ: dict[str, str]) -> dict[str, str]:
    """`environ` as `source VENV/bin/activate` leaves it (and no PYTHONPATH)."""
    environ = {**environ, "VIRTUAL_ENV": str(venv)}
    environ["PATH"] = os.pathsep.join([str(venv / "bin"), environ.get("PATH", "")])
    environ.pop("PYTHONPATH", None)
    environ.pop("PYTHONHOME", None)
    return environ


def run_farine(
    *args: str, cwd: Path = APPS, timeout: float = 30.0, venv: Path | None = None
) -> tuple[int, str]:
    """Run `farine ARGS` to completion and return (exit code, combined output)."""
    proc = FarineProcess(*args, cwd=cwd, venv=venv)
    code = proc.wait(timeout)
    return code, proc.output
