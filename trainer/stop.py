"""Stop signals: SIGUSR1 (SLURM's warning before the time limit), SIGTERM (preemption,
`ft cancel`, a site's scancel) and SIGINT (Ctrl-C) all mean "stop, and be requeued".

Torch-free, so `python -m trainer` installs it before the slow imports: a job preempted while
it is still starting exits with the requeue status too, not killed by the default handler.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable

from ftcore import exits


class StopSignal:
    """A stop signal: SIGUSR1 (SLURM's warning before the time limit), SIGTERM (preemption,
    `ft cancel`) or SIGINT (Ctrl-C). What it does depends on where the job is:

    - start-up (tokenizing, loading, compiling the first step): nothing was trained since the
      last checkpoint, so the process exits 75 at once, even from inside a long C call (a
      watcher thread wakes on the signal; Python's own handler would wait for the call);
    - training: the loop checkpoints at its next check point (validation polls too) and exits 75;
    - after that, further signals are only noted: the exit stays 75, so the job is requeued.

    `on_exit(code)` records the exit when the process leaves without returning (start-up)."""

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
    STARTING, TRAINING = "start-up", "training"

    def __init__(self, on_signal: Callable[[str], None] | None = None,
                 on_exit: Callable[[int], None] | None = None) -> None:
        self.requested = False
        self._noted = False
        self.phase = self.STARTING
        self._previous: dict = {}
        self._on_signal, self._on_exit = on_signal, on_exit
        self._lock = threading.Lock()
        self._wakeup: tuple[int, int] | None = None
        self._old_wakeup = -1

    def _got(self, signum: int) -> None:
        """Once per signal, from the watcher thread (or the main thread, without a watcher)."""
        name = signal.Signals(signum).name
        with self._lock:
            first, self.requested = not self.requested, True
            if not first:
                if not self._noted:  # once: a volley of signals must not flood the log
                    self._noted = True
                    sys.stderr.write(f"ft trainer: got {name} too; already stopping (exit {exits.REQUEUE}), "
                                     "further signals are ignored\n")
                    sys.stderr.flush()
                return
            if self.phase == self.STARTING:
                sys.stderr.write(f"ft trainer: got {name} during start-up: nothing was trained since the last "
                                 f"checkpoint, so it stops now (exit {exits.REQUEUE}); requeued, it starts again\n")
            else:
                sys.stderr.write(f"ft trainer: got {name}; will checkpoint after this step\n")
            sys.stderr.flush()
            if self._on_signal is not None:
                self._on_signal(name)
            if self.phase == self.STARTING:
                if self._on_exit is not None:
                    self._on_exit(exits.REQUEUE)
                sys.stdout.flush()
                os._exit(exits.REQUEUE)

    def _handle(self, signum, frame) -> None:
        if self._wakeup is None:  # no watcher thread (not the main thread): Python's handler does it
            self._got(signum)

    def _watch(self, read_fd: int) -> None:
        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data:
                os.close(read_fd)
                return
            for signum in data:
                if signum in self.SIGNALS:
                    self._got(signum)

    def report_to(self, on_signal: Callable[[str], None] | None, on_exit: Callable[[int], None] | None) -> None:
        """Record signals and the start-up exit from now on (the job folder is known only after the
        handler was installed, which `python -m trainer` does first of all)."""
        with self._lock:
            self._on_signal, self._on_exit = on_signal, on_exit

    def training(self) -> None:
        """The first optimizer step is about to change the weights: from here a stop checkpoints."""
        with self._lock:
            self.phase = self.TRAINING

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():  # Python allows handlers only there
            return
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        # The C-level handler writes the signal number to this pipe at once, whatever the main
        # thread is doing; the watcher acts on it.
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self._wakeup = (read_fd, write_fd)
        threading.Thread(target=self._watch, args=(read_fd,), name="ft-stop-signal", daemon=True).start()

    def uninstall(self, exiting: bool = False) -> None:
        """Give the signals back. A process `exiting` after a stop (`python -m trainer`) ignores
        them instead: a late signal must not turn the requeue exit into a death by signal. A
        caller that goes on (a test, a notebook) always gets its own handlers back; ignored
        signals would be inherited by every process it starts later."""
        if self.requested and exiting:
            # Ignored, not handled: Python puts handled signals back to their default (death)
            # while the interpreter shuts down, and ignored ones it leaves alone.
            for s in self._previous:
                signal.signal(s, signal.SIG_IGN)
            return
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous = {}
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            os.close(self._wakeup[1])  # the watcher reads the end of the pipe, closes it and ends
            self._wakeup = None
