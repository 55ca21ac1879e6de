"""The fast path's asyncio event loop, run in steps by a trio task in trio's own thread.

It does what `farine._broker.aiormq.stepped` does with public API, with a cheaper step
(the loop's own `_run_once()`, inside what `run_forever()` sets up) and gathered writes:

* the loop's selector is an epoll (or kqueue, ...) selector of its own, and the driver
  task waits, the trio way, for that selector's file descriptor to become readable:
  the broker's socket and the loop's self-pipe (`call_soon_threadsafe()` from other
  threads) wake it through trio's own I/O wait; it then runs a step: it polls with a
  zero timeout and runs the ready callbacks, and those they make ready, for a few
  iterations of the loop (the first one only polls);
* a trio task that awaits a call (`TrioDriver.run()`, or `call_in_step()` and
  `wait_future()`: a publish) runs a step itself at once, without polling, so the frame
  is written before anything else happens;
* work that other trio code schedules on the loop between steps (`call_soon()`,
  `call_at()`, a future's result, an ack) is run by a second task, parked until then:
  no system call, no cancellation of the driver's wait;
* the driver waits no longer than the loop's next timer;
* the connection's writes are gathered (`RoundWriter`): with many calls in flight, what
  one round of trio's scheduler writes goes out in one system call.

Callbacks that the loop runs (aiormq's) may call into trio (resuming a trio task,
putting a delivery into a memory object stream): they run in trio's thread, within a
step run by a trio task, where both are allowed.

This is not trio-asyncio: nothing is patched, asyncio runs only inside its steps
(`asyncio.get_running_loop()` works there and nowhere else in the thread), and it
serves only the transport's own coroutines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import selectors
import struct
import sys
import threading
import types
from typing import TYPE_CHECKING, Any, TypeVar, cast

import trio

from farine._broker.aiormq.stepped import (
    LoopDriver,
    WakingLoop,
    wait_future,
    wind_down,
)

if TYPE_CHECKING:
    from collections import deque
    from collections.abc import Callable

__all__ = ("DrivenLoop", "RoundWriter", "TrioDriver")

logger = logging.getLogger("farine.amqp")

T = TypeVar("T")

#: At most how many loop iterations one step runs while callbacks keep becoming ready.
_ITERATIONS_PER_STEP = 16


def _run_ready(ready: deque[asyncio.Handle]) -> None:
    """Run the loop's ready callbacks, and those they make ready, for a few rounds.

    What the loop's own iterations after the first (which polls and fires the due
    timers) do when they do not poll: timers wait for the next step.
    """
    popleft = ready.popleft
    for _ in range(_ITERATIONS_PER_STEP - 1):
        for _ in range(len(ready)):
            handle = popleft()
            if not handle._cancelled:  # pyright: ignore[reportPrivateUsage]
                handle._run()  # pyright: ignore[reportPrivateUsage]
        if not ready:
            return


def _abort(_: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.SUCCEEDED


class _Selector(selectors.DefaultSelector):
    """The loop's selector: it never blocks (the driver waits, through trio), and a step
    may tell it not to poll at all (`poll = False`)."""

    def __init__(self) -> None:
        super().__init__()
        self.poll = True

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if not self.poll:
            return []
        return super().select(0)


class DrivenLoop(WakingLoop):
    """A `WakingLoop` whose steps run the loop's own iterations (see the module
    docstring). A callable that the loop's `call_soon` returned in a step (a bound
    method kept for later) does not wake: look it up again outside.
    """

    def __init__(self, selector: _Selector, wake: Callable[[], None]) -> None:
        super().__init__(selector, wake)
        self.selector = selector
        # The loop's queue of ready callbacks: one object for the loop's whole life.
        self._ready_callbacks = cast("deque[asyncio.Handle]", vars(self)["_ready"])
        # What `run_forever()` uses, unknown to the type stubs.
        loop = cast("Any", self)
        self._run_iteration: Callable[[], None] = loop._run_once
        # asyncio's own `call_soon`, bound: the one a step uses (nothing wakes in a step).
        self._plain_call_soon = types.MethodType(asyncio.SelectorEventLoop.call_soon, self)
        #: Steps that polled for I/O so far: each starts a new round of work.
        self.io_rounds = 0
        self._polling = False  # in a step that polled: the driver flushes after it
        self._flushes: list[Callable[[], None]] = []
        self._asyncgen_hooks: tuple[Callable[[Any], None], Callable[[Any], None]] = (
            loop._asyncgen_firstiter_hook,
            loop._asyncgen_finalizer_hook,
        )

    def step(self, *, poll: bool = True) -> None:
        """Run the callbacks that are ready, polling for I/O first without blocking.

        Callbacks scheduled by those run too, for a few iterations: one awaited call
        goes through several of aiormq's tasks (the caller, the channel, the writer),
        and handing back to trio between each would cost a trio scheduling round each.
        Only the first iteration polls; with `poll=False`, none does, and I/O is left
        for the driver's next step: each poll is a system call, during which the GIL
        goes to any other thread that wants it.

        The first iteration is the loop's own (`_run_once()`), inside what
        `run_forever()` sets up (the running loop, its async generator hooks), without
        its `stop()` and a callback to call it in each iteration. The next ones only
        run what is ready (`_run_ready()`): they
        neither poll nor fire timers, which wait for the next step; in debug mode they
        are the loop's own too, which reports slow callbacks.
        """
        if asyncio._get_running_loop() is not None:  # pyright: ignore[reportPrivateUsage]
            raise RuntimeError("the driven loop cannot step inside a running event loop")
        if self.is_closed():
            raise RuntimeError("the driven loop is closed")
        selector = self.selector
        ready = self._ready_callbacks
        hooks = sys.get_asyncgen_hooks()
        if poll:
            self.io_rounds += 1
            self._polling = True
        self.stepping = True
        selector.poll = poll
        running = cast("Any", self)
        running._thread_id = self.thread  # `is_running()` says True
        sys.set_asyncgen_hooks(*self._asyncgen_hooks)
        asyncio._set_running_loop(self)  # pyright: ignore[reportPrivateUsage]
        # In a step, nothing needs waking: `call_soon` is the loop's own (asyncio and
        # aiormq look it up at each call), without the frame of the override.
        attributes = vars(self)
        attributes["call_soon"] = self._plain_call_soon
        try:
            self._run_iteration()
            if ready:
                if self.get_debug():
                    selector.poll = False
                    for _ in range(_ITERATIONS_PER_STEP - 1):
                        self._run_iteration()
                        if not ready:
                            break
                else:
                    _run_ready(ready)
        finally:
            del attributes["call_soon"]
            asyncio._set_running_loop(None)  # pyright: ignore[reportPrivateUsage]
            sys.set_asyncgen_hooks(*hooks)
            running._thread_id = None
            selector.poll = True
            self.stepping = False
            self._polling = False

    def flush_later(self, flush: Callable[[], None]) -> None:
        """Have `flush()` called once this step and trio's current round are over."""
        self._flushes.append(flush)
        if not self._polling:  # else the driver calls it right after its step
            self.wake()

    @property
    def flush_pending(self) -> bool:
        """True while a `flush_later()` waits to be run."""
        return bool(self._flushes)

    def run_flushes(self) -> None:
        """Call the flushes asked for so far (by the driver, outside steps)."""
        flushes = self._flushes
        if flushes:
            self._flushes = []
            for flush in flushes:
                flush()

    @property
    def ready_callbacks(self) -> deque[asyncio.Handle]:
        """The loop's queue of ready callbacks (read, never changed, outside the loop)."""
        return self._ready_callbacks

    def next_timer(self) -> asyncio.TimerHandle | None:
        """The loop's earliest timer, if any (it may be cancelled)."""
        # The heap of timers: read here, never changed.
        scheduled = cast("list[asyncio.TimerHandle]", vars(self)["_scheduled"])
        return scheduled[0] if scheduled else None

    def next_step_in(self) -> float | None:
        """Seconds until the next step has work (0: now; None: nothing until I/O)."""
        if self._ready_callbacks:
            return 0.0
        timer = self.next_timer()
        if timer is None:
            return None
        return max(0.0, timer.when() - self.time())


#: The frames that settle deliveries (`basic.ack`, `basic.reject`, `basic.nack`): class
#: 60, methods 80, 90 and 120, 21 bytes each (7 of header, a delivery tag and a bit, the
#: end). Nobody waits for them: they ride with the next write.
_SETTLE_FRAME_SIZE = 21
_SETTLE_METHODS = frozenset(struct.pack(">HH", 60, method) for method in (80, 90, 120))


#: The most bytes one gathered write holds; past it, what is held goes out at once.
MAX_HELD_BYTES = 256 * 1024


class RoundWriter:
    """Gathers the writes of an AMQP connection on a driven loop into fewer system calls.

    Each write goes out with its own `send()` in asyncio; on trio, with many calls in
    flight, the tasks of one round of trio's scheduler each publish in a step of their
    own, so each frame would go out alone, each waking the broker.

    * The first write of a round of work (from one poll for I/O to the next,
      `DrivenLoop.io_rounds`) goes out at once: a lone call waits for nothing.
    * The round's next writes are held until the step or trio's round of tasks that
      made them is over: then the driver, or the stepper task, sends them in one write.
    * Frames that only settle deliveries are held, and go out with the next write, or
      alone once the step or trio's round is over.
    * At most `MAX_HELD_BYTES` are held: past that, what is held goes out at once, and
      a write that large goes out alone.

    Writes keep their order; `drain()` and `close()` send what is held first. Installed
    on the connection's `StreamWriter` (its `write`, `drain` and `close`).
    """

    __slots__ = (
        "_drain",
        "_held",
        "_held_bytes",
        "_loop",
        "_round",
        "_settles_only",
        "_transport",
    )

    def __init__(self, writer: asyncio.StreamWriter, loop: DrivenLoop) -> None:
        self._transport = writer.transport
        self._loop = loop
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._settles_only = False  # what is held only settles deliveries
        self._round = -1  # the round of the last write sent at once
        self._drain = writer.drain
        close = writer.close

        def close_after_flush() -> None:
            self.flush()
            close()

        attributes = vars(writer)
        attributes["write"] = self.write
        attributes["drain"] = self.drain
        attributes["close"] = close_after_flush

    def write(self, data: bytes) -> None:
        held = self._held
        if len(data) == _SETTLE_FRAME_SIZE and bytes(data[7:11]) in _SETTLE_METHODS:
            if not held:
                self._settles_only = True
                self._loop.flush_later(self.flush)
            held.append(data)
            return
        if not held or self._settles_only:
            rounds = self._loop.io_rounds
            if rounds != self._round:  # the round's first write: out at once
                self._round = rounds
                if held:
                    held.append(data)
                    self.flush()
                else:
                    self._transport.write(data)
                return
        if len(data) >= MAX_HELD_BYTES:
            # A large write goes out as it is, after what is held: joining it would
            # copy it for nothing.
            self.flush()
            self._transport.write(data)
            return
        if not held:
            self._loop.flush_later(self.flush)
        self._settles_only = False
        held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes >= MAX_HELD_BYTES:
            self.flush()

    def flush(self) -> None:
        """Send what is held, in one write."""
        held = self._held
        if not held:
            return
        self._held = []
        self._held_bytes = 0
        self._settles_only = False
        if not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    async def drain(self) -> None:
        self.flush()
        await self._drain()


class TrioDriver(LoopDriver[DrivenLoop]):
    """Owns a `DrivenLoop` and the trio task that drives it.

    `drive()` must run in a task of the trio run that uses the loop; `run()` runs a
    coroutine on the loop for a trio task of that run; `run_blocking()` serves other
    threads. `stop()` ends the driver and closes the loop.
    """

    def __init__(self) -> None:
        self.loop = DrivenLoop(_Selector(), self._wake)
        self.thread_id = threading.get_ident()
        self._waiting: trio.CancelScope | None = None
        self._stepper: trio.lowlevel.Task | None = None
        self._stopping = False
        self._done = trio.Event()

    def _wake(self) -> None:
        """Work was scheduled from outside a step: have the stepper task run it."""
        stepper = self._stepper
        if stepper is not None:
            self._stepper = None
            trio.lowlevel.reschedule(stepper)

    def _interrupt_wait(self) -> None:
        """Make the driver stop waiting for I/O and recompute its wait."""
        waiting = self._waiting
        if waiting is not None:
            self._waiting = None
            waiting.cancel()

    async def drive(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the loop until `stop()`; immune to cancellation, so that closing works.

        This task polls for I/O; work that trio tasks schedule between its steps is run
        by a second task, parked until then: resuming a parked task costs a fraction of
        cancelling a wait for I/O.
        """
        loop = self.loop
        fd = loop.selector.fileno()
        with trio.CancelScope(shield=True):
            try:
                async with trio.open_nursery() as nursery:
                    # Parked before anyone can call `run()`: a wake-up sent before the
                    # stepper first parks would be lost.
                    await nursery.start(self._step_when_woken)
                    task_status.started()
                    while not self._stopping:
                        await self._drive_until_timer(fd)
                    self._wake()  # the stepper sees `_stopping` and returns
                await wind_down(loop, self._step_and_flush)
            finally:
                self._waiting = None
                trio.lowlevel.notify_closing(fd)  # trio forgets the selector's fd
                with contextlib.suppress(RuntimeError):
                    loop.close()
                self._done.set()

    async def _drive_until_timer(self, fd: int) -> None:
        """Step and wait for I/O, until the loop's next timer is due (or `stop()`).

        The waits share one cancel scope, whose deadline is the loop's earliest timer:
        set when that timer changes, not for every wait.
        """
        loop = self.loop
        ready = loop.ready_callbacks
        with trio.CancelScope() as waiting:
            self._waiting = waiting
            armed: asyncio.TimerHandle | None = None
            while not self._stopping:
                loop.step()
                loop.run_flushes()
                if ready:
                    await trio.lowlevel.checkpoint()  # trio's tasks run, then again
                    continue
                timer = loop.next_timer()
                if timer is not armed:
                    armed = timer
                    waiting.deadline = (
                        math.inf
                        if timer is None
                        else trio.current_time() + max(0.0, timer.when() - loop.time())
                    )
                await trio.lowlevel.wait_readable(fd)
        self._waiting = None

    async def _step_when_woken(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()  # the caller resumes once this task parks below
        while True:
            self._stepper = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(_abort)
            loop = self.loop
            while not self._stopping:
                loop.run_flushes()  # trio's round is over: what it wrote goes out
                if not self._step_here() and not loop.flush_pending:
                    break
                await trio.lowlevel.checkpoint()  # more is ready: trio's tasks run first
            if self._stopping:
                return

    def _step_and_flush(self) -> None:
        self.loop.step()
        self.loop.run_flushes()

    def call_in_step(self, func: Callable[..., T], /, *args: Any) -> T:
        """Call `func(*args)` as part of a step, in the calling trio task, and run the
        step: what it schedules on the loop runs now (the frames of a publish are
        written before the caller waits)."""
        loop = self.loop
        loop.stepping = True  # no wake-up: the step below runs what `func` schedules
        try:
            result = func(*args)
        finally:
            loop.stepping = False
        if self._step_here():
            self._wake()  # the stepper runs the rest
        return result

    async def wait_future(self, future: asyncio.Future[T], on_abandon: Callable[[], object]) -> T:
        """Wait, in a trio task of this run, for `future` of the loop (see
        `farine._broker.aiormq.stepped.wait_future`)."""
        return await wait_future(future, on_abandon)

    def _step_here(self) -> bool:
        """Step the loop (without polling) in the calling task, if anything is ready or
        due; True if more is ready then.

        A timer set before or in the step may be due before the driver would wake: the
        driver's wait is shortened to it (cheaper than interrupting the wait). Often
        nothing is ready: a publish writes its frames itself, and only arms a timer.
        """
        loop = self.loop
        if loop.next_step_in() == 0.0:
            loop.step(poll=False)
        delay = loop.next_step_in()
        if delay is None:
            return False
        if delay == 0.0:
            return True
        waiting = self._waiting
        if waiting is not None:
            deadline = trio.current_time() + delay
            if deadline < waiting.deadline:
                waiting.deadline = deadline
        return False

    async def stop(self) -> None:
        """Cancel what still runs on the loop, stop the driver, close the loop."""
        self._stopping = True
        self._interrupt_wait()
        await self._done.wait()
