"""Run a reward function on many completions with a hard per-completion timeout.

A verifier can hang (sympy simplifying an adversarial expression) or raise on odd model output; one
such completion must cost one zero reward, never the run. A thread cannot be stopped from outside,
and ``signal.alarm`` only works on the main thread, so each reward call runs in a worker process
that is killed and replaced when it overruns. ``concurrent.futures.ProcessPoolExecutor`` is not used
because it cannot kill a single hung task (cancelling a running future does nothing).

Workers use the ``spawn`` start method by default: the trainer holds CUDA state and torch threads,
and forking such a process is unsafe. Spawned workers need a picklable (module-level) reward.

Each worker leads a process group (a session) of its own, so that whatever a reward starts (a
verifier subprocess, an ``os.fork`` child) can be ended with it: the scorer kills the whole group
when it replaces a worker and when it closes. Workers must also end when the trainer dies without
closing them (SIGKILL, OOM killer): on Linux the kernel kills them (``PR_SET_PDEATHSIG``); elsewhere,
and for workers started from a thread other than the main one (the death signal follows the thread
that started the worker), a worker watches its parent pid and the end of its pipe. Either way it
ends without printing a traceback into the trainer's terminal. Being outside the terminal's process
group, workers do not get Ctrl-C; the trainer handles it and closes them.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import pickle
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import NoReturn

__all__ = ["RewardScorer", "score"]

_READY = "ready"


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_PARENT_POLL_S = 0.5  # how often a worker without a death signal checks its parent


def _end_quietly() -> NoReturn:
    """End this worker and whatever its rewards left running in its group, printing nothing."""
    if hasattr(os, "killpg") and os.getpgid(0) == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)  # this process included
    os._exit(0)


def _set_parent_death_signal() -> bool:
    """Ask Linux to SIGKILL this process when the thread that started it ends; False if unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int) -> None:
    """Thread: end the worker once its parent is gone (it is re-parented, so its parent pid changes)."""
    while os.getppid() == parent_pid:
        time.sleep(_PARENT_POLL_S)
    _end_quietly()


def _detach(parent_pid: int | None, death_signal: bool) -> None:
    """Make this worker a process group of its own that ends with its parent (see the module doc)."""
    # Ctrl-C is the trainer's to handle. The scorer starts workers with SIGINT blocked, so a Ctrl-C
    # that reached the trainer's group during start-up is still pending: ignoring SIGINT before
    # unblocking it discards it instead of raising KeyboardInterrupt here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(os, "setsid"):
        with contextlib.suppress(OSError):  # fails only for a group leader, which this is not
            os.setsid()
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if parent_pid is None:  # started by a fork server: its parent is the server
        parent_pid = os.getppid()
    watched = death_signal and _set_parent_death_signal()
    # The parent may have died before the death signal was set (a spawned worker imports for a
    # while first); it would then never come. Its children are re-parented, so the pid tells.
    if os.getppid() != parent_pid:
        _end_quietly()
    if not watched:
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


def _worker_main(
    conn: Connection,
    reward_fn: Callable[[str, str], float],
    parent_pid: int | None = None,
    death_signal: bool = False,
) -> None:
    """Worker loop: answer ``(index, completion, answer)`` requests until told to stop with ``None``."""
    _detach(parent_pid, death_signal)
    try:
        conn.send(_READY)
        while True:
            request = conn.recv()
            if request is None:
                return
            index, completion, answer = request
            try:
                value = float(reward_fn(completion, answer))
                if not math.isfinite(value):
                    raise ValueError(f"reward is {value}")
                reply = (index, True, value)
            except Exception as err:  # any failure of the reward is reported, never fatal
                reply = (index, False, f"{type(err).__name__}: {err}")
            conn.send(reply)
    except (EOFError, OSError):
        # The scorer's end of the pipe is closed: the trainer is gone. Nobody is left to read a
        # traceback, and printing one would land in the user's terminal after the trainer's end.
        _end_quietly()


def _signal_group(pid: int, sig: int) -> bool:
    """Send ``sig`` to the process group led by worker ``pid``; False if there is no such group.

    A worker that has not yet made its group (still starting) has none. A group outlives its leader
    while any member lives, and Linux does not reuse a pid that still names a group.
    """
    if not hasattr(os, "killpg"):
        return False
    try:
        os.killpg(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


@dataclass
class _Worker:
    process: mp.process.BaseProcess
    conn: Connection
    ready: bool = False
    started_at: float = 0.0
    index: int | None = None  # completion being scored
    deadline: float = math.inf


class RewardScorer:
    """A small pool of reward worker processes, reused across :meth:`score` calls.

    Keep one for the whole RL run: starting a spawned worker costs an interpreter start plus the
    reward's imports. Use it as a context manager, or call :meth:`close`.

    Args:
        reward_fn: ``(completion, answer) -> float``.
        timeout_s: wall-clock limit of one reward call, counted from when the call is handed to a
            worker that is already up (worker start-up is not charged to the completion).
        num_workers: processes scoring in parallel.
        start_method: multiprocessing start method; ``"fork"`` starts faster and accepts any callable
            but is only safe in a process without CUDA state or busy threads.
        startup_timeout_s: a worker that does not come up within this time is an error, since no
            reward could be computed at all.
    """

    def __init__(
        self,
        reward_fn: Callable[[str, str], float],
        timeout_s: float,
        num_workers: int = 1,
        start_method: str = "spawn",
        startup_timeout_s: float = 120.0,
    ) -> None:
        if not callable(reward_fn):
            raise ValueError(f"RewardScorer: reward_fn must be callable, got {reward_fn!r}")
        if not timeout_s > 0:
            raise ValueError(f"RewardScorer: timeout_s must be > 0, got {timeout_s}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"RewardScorer: num_workers must be an int >= 1, got {num_workers!r}")
        if start_method not in mp.get_all_start_methods():
            raise ValueError(f"RewardScorer: unknown start method {start_method!r}")
        if start_method != "fork":
            try:
                pickle.dumps(reward_fn)
            except Exception as err:
                raise ValueError(
                    f"RewardScorer: reward_fn must be picklable for start method {start_method!r} "
                    f"(use a module-level function): {err}"
                ) from None
        self._reward_fn = reward_fn
        self._timeout_s = float(timeout_s)
        self._startup_timeout_s = float(startup_timeout_s)
        self._ctx = mp.get_context(start_method)
        self._start_method = start_method
        self._workers: list[_Worker] = []
        # A scorer dropped without close() still takes its workers' groups down (at the latest when
        # the interpreter exits); the list is the one _replace() updates in place.
        self._finalizer = weakref.finalize(self, _kill_all, self._workers, os.getpid())
        for _ in range(num_workers):
            self._workers.append(self._start_worker())

    def _start_worker(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        # A fork server, not this process, is the parent of its workers. The death signal fires when
        # the starting *thread* ends, so it is only asked for from the main thread.
        parent_pid = None if self._start_method == "forkserver" else os.getpid()
        death_signal = parent_pid is not None and threading.current_thread() is threading.main_thread()
        process = self._ctx.Process(
            target=_worker_main, args=(child, self._reward_fn, parent_pid, death_signal), daemon=True
        )
        # The worker inherits the signal mask: with SIGINT blocked, a Ctrl-C during its start-up (while
        # it is still in the terminal's process group) waits instead of interrupting its imports. This
        # process gets its own copy of the signal once SIGINT is unblocked again.
        blocked = hasattr(signal, "pthread_sigmask")
        if blocked:
            if self._start_method != "fork":
                # The first spawn starts multiprocessing's resource tracker, which unblocks SIGINT in
                # this thread when done; start it first so that the block below holds for the worker.
                from multiprocessing import resource_tracker

                resource_tracker.ensure_running()
            old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            process.start()
        finally:
            if blocked and signal.SIGINT not in old_mask:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        child.close()
        return _Worker(process=process, conn=parent, started_at=time.monotonic())

    def _replace(self, slot: int) -> None:
        worker = self._workers[slot]
        _kill(worker)
        _wait_for_exit([worker], 5.0)
        worker.conn.close()
        self._workers[slot] = self._start_worker()

    def score(self, completions: Sequence[str], answers: Sequence[str]) -> tuple[list[float], int]:
        """Rewards of ``completions`` against ``answers``, and how many calls failed or timed out.

        A failed or timed-out call gives reward 0.0; the worker that timed out (or died) is replaced.
        """
        if len(completions) != len(answers):
            raise ValueError(
                f"score: {len(completions)} completions but {len(answers)} answers; they must pair up"
            )
        if not self._workers:
            raise ValueError("score: the scorer is closed")
        rewards = [0.0] * len(completions)
        failures = 0
        pending = deque(range(len(completions)))
        while pending or any(w.index is not None for w in self._workers):
            for w in self._workers:
                if w.ready and w.index is None and pending:
                    w.index = pending.popleft()
                    w.conn.send((w.index, completions[w.index], answers[w.index]))
                    w.deadline = time.monotonic() + self._timeout_s
            now = time.monotonic()
            next_deadline = min(
                w.deadline if w.ready else w.started_at + self._startup_timeout_s for w in self._workers
            )
            ready_conns = wait([w.conn for w in self._workers], timeout=max(0.0, next_deadline - now))
            now = time.monotonic()
            for slot, w in enumerate(self._workers):
                if w.conn in ready_conns:
                    try:
                        message = w.conn.recv()
                    except (EOFError, OSError):
                        message = None  # the worker died (crash, OOM kill, os._exit in the reward)
                    if message == _READY:
                        w.ready = True
                        continue
                    if message is None:
                        if not w.ready:
                            raise RuntimeError("score: a reward worker exited while starting")
                        failures += w.index is not None
                        self._replace(slot)
                        continue
                    index, ok, value = message
                    if ok:
                        rewards[index] = value
                    else:
                        failures += 1
                    w.index, w.deadline = None, math.inf
                elif not w.ready and now >= w.started_at + self._startup_timeout_s:
                    raise RuntimeError(
                        f"score: a reward worker did not start within {self._startup_timeout_s}s"
                    )
                elif w.index is not None and now >= w.deadline and not w.conn.poll(0):
                    failures += 1
                    self._replace(slot)
        return rewards, failures

    def close(self) -> None:
        """Stop the workers (politely, then by force) and whatever their rewards left running."""
        self._finalizer.detach()
        workers, self._workers = self._workers, []
        for w in workers:
            try:
                if w.index is None and w.process.is_alive():
                    w.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        _wait_for_exit(workers, 1.0)
        for w in workers:
            _kill(w)
        _wait_for_exit(workers, 5.0)
        for w in workers:
            w.conn.close()

    def __enter__(self) -> RewardScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _kill(worker: _Worker) -> None:
    """SIGKILL a worker's process group (the worker and what its rewards started) and the worker.

    No polite SIGTERM first: a reward's leftovers are verifiers with nothing to save, and a worker
    being replaced has already overrun its time.
    """
    _signal_group(worker.process.pid, signal.SIGKILL)
    if worker.process.exitcode is None:  # still starting, so not yet the leader of a group
        worker.process.kill()


def _kill_all(workers: Iterable[_Worker], owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # not in a forked copy of the scorer's process
        for w in workers:
            _kill(w)


def _wait_for_exit(workers: Sequence[_Worker], timeout_s: float) -> None:
    """Reap the workers, waiting up to ``timeout_s`` for them to exit.

    Polled rather than ``join(timeout)``: a reward's ``os.fork`` child keeps the worker's end of the
    sentinel pipe that ``join`` waits on open after the worker itself has exited.
    """
    deadline = time.monotonic() + timeout_s
    while any(w.process.exitcode is None for w in workers) and time.monotonic() < deadline:
        time.sleep(0.01)


def score(
    reward_fn: Callable[[str, str], float],
    completions: Sequence[str],
    answers: Sequence[str],
    timeout_s: float,
    num_workers: int = 1,
) -> tuple[list[float], int]:
    """One-off scoring: ``(rewards, n_failures)``; a reward that raises or overruns gives 0 and counts.

    Starts and stops its own workers; a trainer scoring every step should keep a :class:`RewardScorer`.
    """
    with RewardScorer(reward_fn, timeout_s, num_workers=num_workers) as scorer:
        return scorer.score(completions, answers)
