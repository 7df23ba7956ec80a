"""Several copies of one process, forked and watched by a parent that does nothing else.

`Supervisor(count, child).run()` forks `count` children, each running `child(link)` in a
fresh copy of the parent, and keeps that many running until it is told to stop:

- a child reports through `link.ready()` once it serves (or `link.failed(reason)` when its
  start-up fails); the parent calls `on_ready` once, when every child has been ready;
- a child that exits is forked again: at once after a long life, after 0.5 s, 1 s, 2 s…
  (at most 30 s) when it keeps exiting young, so a crash loop does not spin the CPU;
- a slot whose child exits before it was ready `START_ATTEMPTS` times in a row makes the
  parent give up: it stops the others and raises `StartupFailed` with the last reason;
- `SIGTERM` or `SIGINT` to the parent is passed to every child as `SIGTERM`; each stops as
  it would alone (its own clean-up runs), and is killed only after `stop_timeout`.

A child dies with its parent (Linux's parent-death signal, `SIGTERM`). The parent never runs
an event loop or a thread while it forks, and exits only once every child is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from foundation.errors import StartupFailed

log = logging.getLogger(__name__)

START_ATTEMPTS = 3
"""Exits before ready, in a row, after which the parent gives up."""
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
STABLE_AFTER = 10.0
"""A child that ran this long is restarted at once; one that exits younger waits a backoff."""
_PR_SET_PDEATHSIG = 1


class Link:
    """A child's line to its parent: one message, then the line closes."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def ready(self) -> None:
        self._send(b"R")

    def failed(self, reason: str) -> None:
        self._send(b"F" + reason.encode()[:2000])

    def _send(self, message: bytes) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self._fd, message)
        os.close(self._fd)
        self._fd = -1


@dataclass
class _Slot:
    index: int
    pid: int = 0
    fd: int = -1
    """Read end of the running child's link; -1 once it said its one thing."""
    started: float = 0.0
    ready: bool = False
    young_exits: int = 0
    start_failures: int = 0
    due: float | None = 0.0
    """When to fork this slot's next child; None while one runs."""
    reason: str = ""


class Supervisor:
    def __init__(
        self,
        count: int,
        child: Callable[[Link], int],
        *,
        on_ready: Callable[[], None] | None = None,
        stop_timeout: float = 30.0,
    ) -> None:
        if count < 1:
            raise ValueError("count must be at least 1")
        self._child = child
        self._on_ready = on_ready
        self._stop_timeout = stop_timeout
        self._slots = [_Slot(i) for i in range(count)]
        self._stopping = False
        self._announced = False
        self._failure: str | None = None
        self._wake: tuple[int, int] = (-1, -1)

    def run(self) -> int:
        """Run until `SIGTERM`/`SIGINT`; 0 then. Raises `StartupFailed` when children keep
        failing at start, after every child is gone."""
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        self._wake = (wake_r, wake_w)
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)}
        old_wakeup = signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGCHLD, _ignore)
        try:
            failure = self._watch(wake_r)
        finally:
            self._stop_all()
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(wake_r)
            os.close(wake_w)
        if failure is not None:
            raise StartupFailed(failure)
        return 0

    # ------------------------------------------------------------------ parent

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping = True

    def _watch(self, wake: int) -> str | None:
        while not self._stopping:
            self._reap()
            if self._failure is not None:
                return self._failure
            now = time.monotonic()
            for slot in self._slots:
                if not self._stopping and slot.due is not None and slot.due <= now:
                    self._fork(slot)
            self._wait(wake)
        return None

    def _wait(self, wake: int) -> None:
        """Until a child says something, a signal arrives (SIGCHLD included) or a fork is due."""
        dues = [s.due for s in self._slots if s.due is not None]
        timeout = max(0.0, min(dues) - time.monotonic()) if dues else None
        fds = [wake, *(s.fd for s in self._slots if s.fd >= 0)]
        try:
            readable, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for safety
            return
        if wake in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(wake, 512)
        for slot in self._slots:
            if slot.fd >= 0 and slot.fd in readable:
                self._hear(slot)

    def _hear(self, slot: _Slot) -> None:
        message = os.read(slot.fd, 4096)
        os.close(slot.fd)
        slot.fd = -1
        if message.startswith(b"R"):
            slot.ready = True
            slot.start_failures = 0
            log.info("process ready", extra={"pid": slot.pid})
            if not self._announced and all(s.ready for s in self._slots):
                self._announced = True
                if self._on_ready is not None:
                    self._on_ready()
        elif message.startswith(b"F"):
            slot.reason = message[1:].decode(errors="replace")

    def _reap(self) -> None:
        """Collect the children that exited; only ours (the parent may have others, like a Redis)."""
        for slot in self._slots:
            if not slot.pid:
                continue
            try:
                pid, status = os.waitpid(slot.pid, os.WNOHANG)
            except ChildProcessError:  # pragma: no cover - someone else reaped it
                pid, status = slot.pid, 0
            if pid:
                self._exited(slot, os.waitstatus_to_exitcode(status))

    def _exited(self, slot: _Slot, code: int) -> None:
        if slot.fd >= 0:  # it may have said why before it went
            readable, _, _ = select.select([slot.fd], [], [], 0)
            if readable:
                self._hear(slot)
            else:
                os.close(slot.fd)
                slot.fd = -1
        lived = time.monotonic() - slot.started
        exit_ = _describe(code)
        pid, was_ready, slot.pid, slot.ready = slot.pid, slot.ready, 0, False
        if self._stopping:
            return
        if not was_ready:
            slot.start_failures += 1
            slot.reason = slot.reason or exit_
        if slot.start_failures >= START_ATTEMPTS:
            self._failure = f"a process exited during start-up {slot.start_failures} times in a row ({slot.reason})"
            return
        slot.young_exits = slot.young_exits + 1 if lived < STABLE_AFTER else 0
        delay = 0.0 if slot.young_exits == 0 else min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (slot.young_exits - 1))
        slot.due = time.monotonic() + delay
        extra = {"pid": pid, "exit": exit_, "lived_seconds": round(lived, 1), "restart_in_seconds": delay}
        log.warning("process exited; starting another", extra=extra)

    def _fork(self, slot: _Slot) -> None:
        read_end, write_end = os.pipe()
        parent = os.getpid()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        gc.freeze()  # what the parent made stays shared with the child instead of being copied
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child; measured by the process tests
            os.close(read_end)
            self._become_child(parent, write_end)
        os.close(write_end)
        slot.pid, slot.fd, slot.started, slot.due, slot.reason = pid, read_end, time.monotonic(), None, ""

    def _become_child(self, parent: int, write_end: int) -> None:  # pragma: no cover - runs in the child
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for fd in (*self._wake, *(s.fd for s in self._slots)):
                if fd >= 0:
                    os.close(fd)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _die_with(parent)
            code = self._child(Link(write_end))
        except BaseException:
            log.exception("process failed")
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(code)

    def _stop_all(self) -> None:
        """SIGTERM to every child, then wait; SIGKILL to any still there after `stop_timeout`."""
        self._stopping = True
        for slot in self._slots:
            slot.due = None
            _signal(slot.pid, signal.SIGTERM)
        deadline = time.monotonic() + self._stop_timeout
        while any(s.pid for s in self._slots):
            self._reap()
            if time.monotonic() > deadline:
                for slot in self._slots:
                    if slot.pid:
                        log.warning("process did not stop in time; killing it", extra={"pid": slot.pid})
                        _signal(slot.pid, signal.SIGKILL)
                        with contextlib.suppress(ChildProcessError):
                            os.waitpid(slot.pid, 0)
                        slot.pid = 0
                break
            time.sleep(0.02)
        for slot in self._slots:
            if slot.fd >= 0:
                os.close(slot.fd)
                slot.fd = -1


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    """SIGCHLD only needs to wake the parent (through the wake-up pipe)."""


def _signal(pid: int, sig: int) -> None:
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit status {code}"


def _die_with(parent: int) -> None:  # pragma: no cover - runs in the child
    """SIGTERM when the parent dies, so no child outlives it (not even a `kill -9`ed one)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    if os.getppid() != parent:  # it died before the signal was set up
        os._exit(0)
