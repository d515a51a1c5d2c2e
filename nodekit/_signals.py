"""Stop requests: SIGINT and SIGTERM become a flag that training checks between steps
and at phase boundaries, never an exception raised inside JAX.

- The CLI calls `install_cli()` first thing, before its heavy imports, so no signal is
  lost during start-up. The first Ctrl-C (or SIGTERM) sets the flag: the run finishes
  its step, checkpoints, writes its summary and raises `Stopped` (exit 130 or 143). A
  second one ends the process at once (exit 130/143): a watcher thread woken through
  `signal.set_wakeup_fd` does it even while the main thread is inside a long XLA call.
  Every file a run writes is replaced atomically or appended line by line, so an exit
  at any moment loses nothing that a rerun cannot resume.
- Library callers of `nodekit.train` get the same first-signal behaviour through
  `guard()` (handlers installed for the duration of the call, in the main thread
  only, then restored); their second Ctrl-C raises `KeyboardInterrupt` as usual.

This module imports only the standard library (the CLI installs it before importing JAX).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

from ._errors import NodekitError

#: When this module was first imported: the `nodekit` command imports it first thing,
#: so this is (within a few milliseconds) the process start for `time_to_first_step_s`.
PROCESS_START = time.perf_counter()

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(NodekitError):
    """A run stopped on request (Ctrl-C / SIGINT, or SIGTERM), not on a fault.

    Training stops after the step in progress, writes a checkpoint and `summary.json`
    (status `stopped (SIGINT)`), then raises this. Rerunning the same command resumes
    the run. `exit_code` is 130 for SIGINT and 143 for SIGTERM (128 + the signal), what
    a shell or a batch scheduler expects of an interrupted job.

    **Attributes:** `signal` (`"SIGINT"` or `"SIGTERM"`), `step` (steps finished, or
    `None` before training began), `summary` (the summary written, or `None`).

    **Example:**

    ```python
    # not run: the except branch needs a Ctrl-C while it trains (without one, it just trains)
    import nodekit

    try:
        nodekit.train("tiny", "runs/tiny-stopped")
    except nodekit.Stopped as e:   # Ctrl-C: checkpoint written, rerun to resume
        print(e.step, e.signal, e.exit_code)
    ```
    """

    def __init__(self, message: str, *, signal_name: str = "SIGINT", step: int | None = None,
                 summary: dict | None = None):
        self.signal = signal_name
        self.step = step
        self.summary = summary
        self.exit_code = 128 + int(getattr(signal, signal_name, signal.SIGINT))
        super().__init__(message)


class _State:
    signum: int | None = None  # the first stop signal received
    cli: bool = False  # install_cli() ran: handlers stay for the process
    depth: int = 0  # nested guard() blocks (the outermost installs and clears)


_state = _State()


def requested() -> str | None:
    """The name of the stop signal received (`"SIGINT"`, `"SIGTERM"`), or `None`."""
    return signal.Signals(_state.signum).name if _state.signum is not None else None


def clear() -> None:
    """Forget a stop request (after it has been acted on, e.g. between test runs)."""
    _state.signum = None


def raise_if_stopped(where: str, step: int | None = None) -> None:
    """Raise `Stopped` if a stop was requested; `where` says what was interrupted, in
    words (e.g. "before training started")."""
    name = requested()
    if name is not None:
        raise Stopped(f"stopped {where} ({name})", signal_name=name, step=step)


def _note(text: str) -> None:
    try:  # os.write: safe inside a signal handler and from another thread
        os.write(2, f"\nnodekit: {text}\n".encode())
    except OSError:
        pass


def _first(signum: int) -> None:
    if _state.signum is None:
        _state.signum = signum
        name = signal.Signals(signum).name
        _note(f"{name} received: stopping after the current step (a checkpoint and the "
              "summary are written); press Ctrl-C again to exit at once.")


def _library_handler(signum, frame):
    if _state.signum is not None and signum == signal.SIGINT:
        raise KeyboardInterrupt
    _first(signum)


def _cli_handler(signum, frame):
    # The watcher thread counts signals (it runs even while this thread is blocked in
    # XLA); this handler only makes sure the flag is set.
    if _state.signum is None:
        _state.signum = signum


def _watch(fd: int) -> None:
    seen = 0
    while True:
        try:
            data = os.read(fd, 64)
        except OSError:
            return
        if not data:
            return
        for signum in data:
            if signum not in _SIGNALS:
                continue
            seen += 1
            if seen == 1:
                _first(signum)
            else:
                _note(f"{signal.Signals(signum).name} received again: exiting now. Rerun "
                      "the same command to resume from the last checkpoint.")
                os._exit(128 + signum)


def install_cli() -> None:
    """Install the CLI's handlers for SIGINT and SIGTERM (call first, in the main
    thread). Process-wide by design: the command owns the process."""
    if _state.cli or threading.current_thread() is not threading.main_thread():
        return
    for sig in _SIGNALS:
        signal.signal(sig, _cli_handler)
    try:
        r, w = os.pipe()
        os.set_blocking(w, False)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        threading.Thread(target=_watch, args=(r,), name="nodekit-signals", daemon=True).start()
    except (OSError, ValueError):  # pragma: no cover - no pipes: the flag still works
        pass
    _state.cli = True


@contextlib.contextmanager
def guard():
    """Turn SIGINT/SIGTERM into a stop request for the duration of the block (library
    callers); a no-op under the CLI (already installed) or outside the main thread."""
    if (_state.cli or _state.depth
            or threading.current_thread() is not threading.main_thread()):
        yield
        return
    old = {}
    _state.depth += 1
    try:
        for sig in _SIGNALS:
            old[sig] = signal.signal(sig, _library_handler)
        yield
    finally:
        _state.depth -= 1
        for sig, handler in old.items():
            signal.signal(sig, handler)
        clear()

