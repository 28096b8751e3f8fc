"""Run a reward function on many completions with a hard per-completion timeout.

A verifier can hang (sympy simplifying an adversarial expression) or raise on odd model output; one
such completion must cost one zero reward, never the run. A thread cannot be stopped from outside,
and ``signal.alarm`` only works on the main thread, so each reward call runs in a worker process
that is killed and replaced when it overruns. ``concurrent.futures.ProcessPoolExecutor`` is not used
because it cannot kill a single hung task (cancelling a running future does nothing).

Workers use the ``spawn`` start method by default: the trainer holds CUDA state and torch threads,
and forking such a process is unsafe. Spawned workers need a picklable (module-level) reward.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import pickle
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

__all__ = ["RewardScorer", "score"]

_READY = "ready"


def _worker_main(conn: Connection, reward_fn: Callable[[str, str], float]) -> None:
    """Worker loop: answer ``(index, completion, answer)`` requests until told to stop with ``None``."""
    # Ctrl-C reaches the whole process group; the parent decides when workers end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
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
            conn.send((index, True, value))
        except Exception as err:  # any failure of the reward is reported, never fatal
            conn.send((index, False, f"{type(err).__name__}: {err}"))


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
        self._workers = [self._start_worker() for _ in range(num_workers)]

    def _start_worker(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=_worker_main, args=(child, self._reward_fn), daemon=True)
        process.start()
        child.close()
        return _Worker(process=process, conn=parent, started_at=time.monotonic())

    def _replace(self, slot: int) -> None:
        worker = self._workers[slot]
        worker.process.kill()
        worker.process.join(timeout=5)
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
        """Stop the workers (politely, then by force)."""
        for w in self._workers:
            try:
                if w.index is None and w.process.is_alive():
                    w.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            w.process.join(timeout=1)
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
            w.conn.close()
        self._workers = []

    def __enter__(self) -> RewardScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
