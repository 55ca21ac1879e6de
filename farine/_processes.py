"""`farine start --workers N` and `--reload`: a supervisor of `farine start` processes.

The supervisor runs no service itself. It starts N worker processes (`farine start` with
the same modules and options), each consuming the same queues (competing consumers:
RabbitMQ shares the messages out). A worker that crashes is started again after a
pause that doubles up to `RESTART_BACKOFF`'s cap; one that stops on its own (its
services finished) is not. SIGINT and SIGTERM are passed on to every worker, which
drains gracefully; the supervisor exits once all have, with 0 when they all exited 0.

With `reload`, a change to a Python or INI file under the given directories (through
the `watchfiles` library) stops the workers gracefully and starts them again; a worker
that fails (a syntax error, say) is then started again at the next change.

Workers run in a session of their own, so that Ctrl-C in a terminal reaches the
supervisor only, which passes it on once. Each holds the read end of a pipe (the
lifeline) that the supervisor never writes to: when the supervisor dies, even killed,
the pipe closes and the worker stops gracefully (`worker_main`). Each worker gets
`FARINE_WORKER` (its number, from 1), `FARINE_WORKERS` (how many there are) and
`FARINE_WORKER_INDEX` (its number minus 1: the offset of its `--http` port) in its
environment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import anyio

from farine.ops._address import WORKER_INDEX_VARIABLE

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from anyio.abc import Process, TaskStatus

__all__ = ("RESTART_BACKOFF", "Supervisor", "module_directories", "worker_main")

logger = logging.getLogger("farine.workers")

#: Pause before restarting a crashed worker: first, growth factor, cap (seconds).
RESTART_BACKOFF: Final = (0.5, 2.0, 30.0)
#: A worker that ran this long before crashing starts again after the first pause.
STABLE_AFTER: Final = 30.0
#: Exit code of a worker whose command line or configuration is wrong: not restarted.
EXIT_USAGE: Final = 2


@dataclass
class _Worker:
    number: int
    process: Process | None = None
    code: int | None = None


@dataclass
class Supervisor:
    """Run `command` as `workers` processes until they stop or a signal stops them.

    Args:
        arguments: The worker's `farine` arguments (`start MODULE ...`).
        workers: How many worker processes to run.
        watch: With `--reload`: the directories whose Python and INI files restart the
            workers when they change; None: no reload.
    """

    arguments: Sequence[str]
    workers: int
    watch: Sequence[Path] | None = None
    _workers: list[_Worker] = field(default_factory=list[_Worker])
    _stopping: anyio.Event = field(default_factory=anyio.Event)
    _changed: anyio.Event = field(default_factory=anyio.Event)
    _generation: int = 0
    _lifeline: int = -1

    async def run(self) -> int:
        """Supervise the workers; return 0 once all stopped with exit code 0, else 1 (2
        when a worker reported a bad command line or configuration)."""
        self._workers = [_Worker(number) for number in range(1, self.workers + 1)]
        self._stopping, self._changed = anyio.Event(), anyio.Event()  # on this run's loop
        # The workers' lifeline: they hold its read end, and see it close (EOF) when the
        # supervisor is gone, even killed; nothing is ever written to it.
        self._lifeline, lifeline = os.pipe()
        try:
            return await self._run()
        finally:
            os.close(self._lifeline)
            os.close(lifeline)

    async def _run(self) -> int:
        async with anyio.create_task_group() as tg:
            await tg.start(self._forward_signals)
            if self.watch:
                await tg.start(self._watch_files, self.watch)
            async with anyio.create_task_group() as running:
                for worker in self._workers:
                    running.start_soon(self._supervise, worker)
            self._stopping.set()  # ends the file watcher's wait at once
            tg.cancel_scope.cancel()
        codes = [worker.code for worker in self._workers]
        if any(code == EXIT_USAGE for code in codes):
            return EXIT_USAGE
        if all(code == 0 for code in codes):
            logger.info("all %d worker(s) stopped", len(codes))
            return 0
        logger.error("worker exit codes: %s", ", ".join(str(code) for code in codes))
        return 1

    async def _supervise(self, worker: _Worker) -> None:
        initial, factor, cap = RESTART_BACKOFF
        delay = initial
        while not self._stopping.is_set():
            generation = self._generation
            began = anyio.current_time()
            worker.code = code = await self._start_and_wait(worker)
            if self._stopping.is_set():
                return
            if self._generation != generation:
                continue  # stopped for a reload: start again at once
            if code == 0 and not self.watch:
                logger.info("worker %d finished (its services stopped)", worker.number)
                return
            if code == EXIT_USAGE:
                logger.error(
                    "worker %d exited with code %d (bad command line or configuration); "
                    "not restarting it",
                    worker.number,
                    code,
                )
                return
            if self.watch:
                logger.log(
                    logging.INFO if code == 0 else logging.ERROR,
                    "worker %d exited with code %d; starting it again at the next change",
                    worker.number,
                    code,
                )
                await self._wait_for(self._changed)
                continue
            if anyio.current_time() - began >= STABLE_AFTER:
                delay = initial
            logger.warning(
                "worker %d exited with code %d; restarting it in %.1fs",
                worker.number,
                code,
                delay,
            )
            with anyio.move_on_after(delay):
                await self._stopping.wait()
            delay = min(delay * factor, cap)

    async def _wait_for(self, event: anyio.Event) -> None:
        async with anyio.create_task_group() as tg:

            async def stop_waiting() -> None:
                await self._stopping.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(stop_waiting)
            await event.wait()
            tg.cancel_scope.cancel()

    async def _start_and_wait(self, worker: _Worker) -> int:
        env = {
            **os.environ,
            "FARINE_WORKER": str(worker.number),
            "FARINE_WORKERS": str(self.workers),
            # With --http, worker N's endpoint listens on the port + N - 1.
            WORKER_INDEX_VARIABLE: str(worker.number - 1),
        }
        command = [
            sys.executable, "-m", "farine._processes", str(self._lifeline), *self.arguments
        ]  # fmt: skip
        process = await anyio.open_process(
            command,
            pass_fds=(self._lifeline,),
            stdin=subprocess.DEVNULL,
            stdout=None,
            stderr=None,
            env=env,
            # Ctrl-C in a terminal signals the whole foreground group: the workers must
            # get it once, from the supervisor, or they would take it as a second signal.
            start_new_session=True,
        )
        worker.process = process
        logger.info("worker %d started (pid %d)", worker.number, process.pid)
        code = -1
        # Shielded: a worker is waited for until it exited, whatever happens here.
        with anyio.CancelScope(shield=True):
            code = await process.wait()
        worker.process = None
        return code

    def _signal_all(self, signum: int) -> None:
        for worker in self._workers:
            if worker.process is not None and worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                    worker.process.send_signal(signal.Signals(signum))

    async def _forward_signals(self, *, task_status: TaskStatus[None]) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if not self._stopping.is_set():
                    live = sum(worker.process is not None for worker in self._workers)
                    logger.info(
                        "received %s: stopping %d worker(s) gracefully (a second signal "
                        "stops them at once)",
                        name,
                        live,
                    )
                    self._stopping.set()
                else:
                    logger.warning("received %s again: passing it on", name)
                self._signal_all(signum)

    async def _watch_files(
        self, directories: Sequence[Path], *, task_status: TaskStatus[None]
    ) -> None:
        import watchfiles

        watched = ", ".join(str(directory) for directory in directories)
        changes = watchfiles.awatch(
            *directories,
            watch_filter=watchfiles.PythonFilter(extra_extensions=(".ini",)),
            stop_event=self._stopping,  # its watching thread polls it
        )
        logger.info("reload: watching Python and INI files under %s", watched)
        task_status.started()
        async for found in changes:
            if self._stopping.is_set():
                return
            paths = sorted({path for _, path in found})
            shown = ", ".join(paths[:3])
            more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
            logger.info("reload: %s changed; restarting the worker(s)", shown + more)
            self._generation += 1
            changed, self._changed = self._changed, anyio.Event()
            changed.set()
            self._signal_all(signal.SIGTERM)


def module_directories(modules: Sequence[str]) -> list[Path]:
    """The directories of `modules` (packages), to watch for `--reload`, without
    importing them.

    Raises:
        ServiceNotFound: A module cannot be found.
    """
    import importlib.util
    from pathlib import Path

    from farine.exceptions import ServiceNotFound

    found: list[Path] = []
    for module in modules:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            raise ServiceNotFound(f"no module named {module!r} (is it importable from here?)")
        if spec.submodule_search_locations:
            found.extend(Path(location) for location in spec.submodule_search_locations)
        elif spec.origin:
            found.append(Path(spec.origin).parent)
    return found


def worker_main(argv: Sequence[str]) -> None:
    """Run one worker: `farine ARGS...`, stopped gracefully if its supervisor dies.

    Args:
        argv: The lifeline's file descriptor, then the `farine` arguments.
    """
    lifeline = int(argv[0])
    threading.Thread(
        target=_stop_when_orphaned, args=(lifeline,), name="farine-lifeline", daemon=True
    ).start()
    sys.argv = ["farine", *argv[1:]]
    from farine.cli import run_main

    run_main()


def _stop_when_orphaned(lifeline: int) -> None:
    try:
        while os.read(lifeline, 1):
            pass
    except OSError:
        return
    # EOF: the supervisor is gone (killed, say); a graceful stop, as if it had sent SIGTERM.
    logger.warning("the supervisor is gone: stopping")
    os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    worker_main(sys.argv[1:])
