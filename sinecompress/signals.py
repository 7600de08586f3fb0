"""Turn SIGINT, SIGTERM and SIGHUP into an exception, so that a stopped run unwinds through its cleanups.

Unwinding runs every ``atomic_output`` / ``atomic_file`` cleanup, so an interrupted run leaves no
temporary output behind; only the work directory of fitted layers stays, for ``--resume``.
(Click would turn KeyboardInterrupt into "Aborted!" and exit 1; this keeps 130 and 143.)
"""

from __future__ import annotations

import signal


class Interrupted(BaseException):  # like KeyboardInterrupt: `except Exception` must not swallow it
    def __init__(self, signum: int):
        super().__init__(signum)
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum  # 130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP (the shell's convention)


SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # a closed terminal must clean up too
received: Interrupted | None = None  # set once a signal arrived, whatever exception carried it out


def _raise(signum, frame):
    global received
    # Raise once; a second signal during cleanup must not interrupt the cleanup itself.
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    received = Interrupted(signum)
    # Native code that calls back into Python (safetensors, torch) may wrap this exception in its
    # own error type; the CLI checks `received` so such a run still reports the signal.
    raise received


def install() -> None:
    global received
    received = None
    for s in SIGNALS:
        signal.signal(s, _raise)
