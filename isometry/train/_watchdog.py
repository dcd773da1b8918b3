"""A training run that stops making progress says so and exits, never hangs silently.

A compiled XLA call is native code: while it runs, Python's signal handlers wait, so Ctrl-C
does nothing and a call that never returns (a deadlock in a native library) would hang the
run for good. `Watchdog` is a daemon thread beside the loop:

- the loop calls `beat(what)` whenever it starts something (a step, a record, a checkpoint);
- when no beat came for `stall_timeout` seconds, it prints one line naming what was running,
  since when, and where the run resumes from, and ends the process with exit code 3;
- Ctrl-C pressed twice while the loop is inside one native call (the loop never got to see
  the first) ends the process at once with exit code 130 and the same line.

Ending the process from the thread is safe for the run directory: records are flushed and
fsync'ed one by one and checkpoints are written atomically, so `--resume` continues from the
last checkpoint as after a kill.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import threading
import time
from typing import Callable

__all__ = ["Watchdog", "STALL_EXIT_CODE", "DEFAULT_STALL_TIMEOUT"]

#: Exit code of a run ended by the watchdog (no progress for `stall_timeout` seconds).
STALL_EXIT_CODE = 4
#: Seconds without progress before a run is ended (far longer than any single step or
#: spectrum of the toolkit's own settings; raise it for paper scale on a CPU).
DEFAULT_STALL_TIMEOUT = 1800.0


class Watchdog:
    """Ends the process when the loop makes no progress for `stall_timeout` seconds.

    Args:
      stall_timeout: seconds without a `beat` before the run is ended (None or 0: never).
      resume_hint: `() -> str`, where the run continues from (read when the line is printed).
      exit: how the process ends (`os._exit`; tests pass their own).

    Use as a context manager around the loop; `beat(what)` before each piece of work.
    """

    def __init__(self, stall_timeout: float | None, resume_hint: Callable[[], str] = lambda: "",
                 exit: Callable[[int], None] = os._exit):
        if stall_timeout is not None and not stall_timeout >= 0:
            raise ValueError(f"stall_timeout must be >= 0 seconds (0: no watchdog), got "
                             f"{stall_timeout}")
        self.stall_timeout = stall_timeout or None
        self.resume_hint, self._exit = resume_hint, exit
        self.what, self.since = "starting", time.monotonic()
        self._stop = threading.Event()
        self._thread = None
        self._wakeup = None  # (reader, writer, previous wakeup fd) while Ctrl-C is watched

    def beat(self, what: str) -> None:
        """Progress: `what` is starting now."""
        self.what, self.since = what, time.monotonic()

    def _line(self, reason: str) -> str:
        hint = self.resume_hint()
        return (f"isometry train: {reason} while {self.what} "
                f"({time.monotonic() - self.since:.0f} s ago){'; ' + hint if hint else ''}")

    def _end(self, reason: str, code: int) -> None:
        print(self._line(reason), file=sys.stderr, flush=True)
        self._exit(code)

    def __enter__(self) -> "Watchdog":
        if threading.current_thread() is threading.main_thread():
            reader, writer = socket.socketpair()
            reader.setblocking(False)
            writer.setblocking(False)
            try:
                previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
                self._wakeup = (reader, writer, previous)
            except ValueError:  # signals are not deliverable here
                reader.close()
                writer.close()
        self._thread = threading.Thread(target=self._watch, name="isometry-watchdog", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self._wakeup is not None:
            reader, writer, previous = self._wakeup
            signal.set_wakeup_fd(previous)
            reader.close()
            writer.close()

    def _interrupts(self, timeout: float) -> int:
        """How many SIGINTs arrived in the next `timeout` seconds (0 when not watched)."""
        if self._wakeup is None:
            self._stop.wait(timeout)
            return 0
        reader = self._wakeup[0]
        ready, _, _ = select.select([reader], [], [], timeout)
        if not ready:
            return 0
        try:
            data = reader.recv(64)
        except (BlockingIOError, OSError):
            return 0
        return data.count(bytes([signal.SIGINT]))

    def _watch(self) -> None:
        pending = None  # the beat during which a first Ctrl-C arrived
        while not self._stop.is_set():
            n = self._interrupts(0.5)
            if self._stop.is_set():
                return
            beat = (self.what, self.since)
            if n:
                if pending == beat or n >= 2:
                    return self._end("stopped by a second Ctrl-C inside a native call", 130)
                pending = beat
            elif pending is not None and pending != beat:
                pending = None  # the loop moved on (and saw the Ctrl-C itself)
            idle = time.monotonic() - self.since
            if self.stall_timeout is not None and idle > self.stall_timeout:
                return self._end(f"no progress for {self.stall_timeout:g} s (--stall-timeout)",
                                 STALL_EXIT_CODE)
