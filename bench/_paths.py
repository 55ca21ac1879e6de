"""What the benchmarks share to measure farine's two AMQP paths, each row in its own process.

A farine row runs on the fast path or on the stock path (aiormq's documented API only),
chosen by the `FARINE_AMQP_FAST_PATH` environment variable of the row's process. Each
row runs in a process of its own: the fast path replaces module globals of aiormq once
chosen, so a raw aiormq row sharing its process would be measured partly on farine's
code; and the peak RSS of a process is only comparable when it ran one row.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from farine._broker.aiormq.fastpath import ENV_VAR, decide

#: The `--fast-path` choices; `both` measures the two paths side by side.
CHOICES = ("on", "off", "both")

#: The row label of each path, and the value of `FARINE_AMQP_FAST_PATH` that selects it.
PATH_ENV = {"fast": "on", "stock": "off", "auto": "auto"}


def paths(choice: str | None) -> list[str]:
    """The paths to measure: `--fast-path`, else `FARINE_AMQP_FAST_PATH`, else both.

    Raises:
        SystemExit: `FARINE_AMQP_FAST_PATH` is not auto, on or off.
    """
    if choice is None:
        choice = os.environ.get(ENV_VAR, "").strip().lower() or "both"
        if choice not in (*CHOICES, "auto"):
            raise SystemExit(f"{ENV_VAR} = {choice!r}: expected one of auto, on, off")
    return {"on": ["fast"], "off": ["stock"], "auto": ["auto"]}.get(choice, ["fast", "stock"])


def tree_arg(given: str, script: str) -> tuple[str, Path]:
    """Parse a `--tree NAME=PATH` argument: a farine checkout holding `bench/<script>`.

    Raises:
        SystemExit: `given` is not NAME=PATH, or PATH holds no such script.
    """
    name, sep, path = given.partition("=")
    if not name or not sep or not (Path(path) / "bench" / script).is_file():
        raise SystemExit(f"--tree {given!r}: expected NAME=PATH of a farine checkout")
    return name, Path(path).resolve()


def fast_path_enabled() -> bool:
    """Whether farine takes the fast path in this process (read from the switch)."""
    return decide("auto").enabled


def run_row(script: str, argv: list[str], label: str, path: str | None) -> dict[str, Any]:
    """Run row `label` of `script` in a new process; return the JSON object it printed last.

    Args:
        script: The benchmark script (`__file__`), run with `--row label`.
        argv: The script's other arguments.
        label: The row to run.
        path: `fast`, `stock` or `auto` for a farine row (its `FARINE_AMQP_FAST_PATH`);
            None for a raw aiormq row, whose process has the fast path off.

    Raises:
        RuntimeError: The row failed, or ran on the other path than asked.
    """
    env = dict(os.environ, **{ENV_VAR: PATH_ENV[path] if path else "off"})
    done = subprocess.run(
        [sys.executable, script, *argv, "--row", label],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"row {label!r} failed (exit code {done.returncode})")
    result: dict[str, Any] = json.loads(lines[-1])
    if path in ("fast", "stock") and result.get("fast") != (path == "fast"):
        raise RuntimeError(f"row {label!r} ran with fast path = {result.get('fast')}")
    return result


class LineProcess:
    """A process that reads commands as JSON lines on stdin and answers each with one
    JSON line on stdout."""

    def __init__(self, label: str, argv: list[str], env: dict[str, str]) -> None:
        self.label = label
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )

    def answer(self) -> Any:
        """The process's next answer.

        Raises:
            RuntimeError: The process ended instead.
        """
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"row {self.label!r} failed (exit code {self.process.wait()})")
        return json.loads(line)

    def send(self, command: object) -> None:
        """Send `command`, without waiting for an answer."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()


class RowProcess(LineProcess):
    """A row running in a process of its own, answering one JSON line per command.

    The process is `script --row label` with the row's path in its environment, and
    `pythonpath`, when given, as its `PYTHONPATH` (the farine tree it imports). Errors
    name the row `shown` when given (a row of another tree: `NAME: label`), else `label`.
    """

    def __init__(
        self,
        script: str,
        argv: list[str],
        label: str,
        path: str | None,
        *,
        pythonpath: str | None = None,
        shown: str | None = None,
    ) -> None:
        self.path = path
        env = dict(os.environ, **{ENV_VAR: PATH_ENV[path] if path else "off"})
        if pythonpath is not None:
            env["PYTHONPATH"] = pythonpath
        command = [sys.executable, script, *argv, "--row", label]
        super().__init__(label if shown is None else shown, command, env)

    def ask(self, command: object) -> Any:
        """Send `command`; return the row's answer."""
        self.send(command)
        return self.answer()

    def check_ready(self) -> None:
        """Wait until the row is set up; check it runs on the path its label names.

        Raises:
            RuntimeError: The row failed, or runs on the other path.
        """
        ready = self.answer()
        if not isinstance(ready, dict) or "ready" not in ready:
            raise RuntimeError(f"row {self.label!r}: {ready!r}")
        if self.path in ("fast", "stock") and ready["ready"] != (self.path == "fast"):
            raise RuntimeError(f"row {self.label!r} runs with fast path = {ready['ready']}")


def max_rss_mib() -> float:
    """The peak resident set size of this process so far, in MiB (Linux: KiB units)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """The resident set size of this process now, in MiB (from /proc/self/statm)."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


def median(values: list[float]) -> float:
    """The median, or NaN when there is no value."""
    return statistics.median(values) if values else float("nan")
