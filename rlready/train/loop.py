"""What every stage's loop shares: how it stops on SIGTERM/SIGINT."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from rlready.errors import Interrupted


class StopFlag:
    """SIGTERM/SIGINT for the whole life of a stage.

    Inside ``deferred()`` (the training loop) a signal only sets ``signum``: the loop finishes its step,
    checkpoints and raises ``Interrupted`` itself. Anywhere else (start-up, evaluation, export) there is
    nothing to checkpoint, so the signal raises ``Interrupted`` at once; every write there is atomic, so the
    same command starts again cleanly. Only the first signal raises: a second one (e.g. Ctrl-C pressed twice,
    or the terminal's and a parent's copy of one) must not interrupt the clean-up of the first.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.phase = "start-up"
        self._deferred = False
        self._raised = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():  # Python delivers signals there only
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        first = self.signum is None
        self.signum = signum
        if first and not self._deferred and not self._raised:
            self._raised = True
            raise Interrupted(
                f"interrupted by {signal.Signals(signum).name} during {self.phase}; "
                "run the same command to resume"
            )

    @contextlib.contextmanager
    def deferred(self) -> Iterator[StopFlag]:
        self._deferred = True
        try:
            yield self
        finally:
            self._deferred = False

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def die_with_parent() -> None:
    """A stage started by ``rlready study`` (which sets ``RLREADY_PARENT_PID``) gets SIGTERM when the study
    dies, even by SIGKILL, so it checkpoints and ends instead of running on unowned (Linux only: the
    kernel's PR_SET_PDEATHSIG; elsewhere the study's forwarding of its own signals is all there is)."""
    parent = os.environ.get("RLREADY_PARENT_PID", "")
    if not parent.isdigit() or not sys.platform.startswith("linux") or os.getppid() != int(parent):
        return  # not started by the study itself (e.g. a launcher's worker: the launcher is its parent)
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    if os.getppid() != int(parent):  # the study died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
