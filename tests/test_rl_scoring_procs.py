"""Reward workers and the processes around them: grandchildren, a killed trainer, Ctrl-C.

These start real processes. The rewards live in tests/rl_scoring_helpers.py, which spawned workers
import (this module imports pytest, which a worker should not need).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lm_runs import wait_for
from rl_scoring_helpers import process_reward

from rlready.rl.scoring import RewardScorer

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads process states from /proc")

TESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = TESTS_DIR.parent


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def noted_pids(directory: Path, name: str, count: int, timeout_s: float = 10.0) -> list[int]:
    """The pids that ``count`` processes wrote as ``directory/name-<pid>``."""
    files: list[Path] = []

    def found() -> bool:
        files[:] = sorted(directory.glob(f"{name}-*"))
        return len(files) >= count

    wait_for(found, timeout_s, f"{count} {name} pid file(s) in {directory}", interval=0.02)
    return [int(f.read_text()) for f in files]


def kill_leftovers(pids: list[int]) -> None:
    """Do not leave a failed test's sleepers behind."""
    for pid in pids:
        if running(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# --- grandchildren --------------------------------------------------------------------------------


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
def test_close_ends_the_rewards_grandchildren(tmp_path: Path, start_method: str) -> None:
    pids: list[int] = []
    try:
        with RewardScorer(process_reward, timeout_s=20.0, start_method=start_method) as scorer:
            assert scorer.score([f"fork:{tmp_path}"], [""]) == ([1.0], 0)
            pids = noted_pids(tmp_path, "grandchild", 1)
            assert running(pids[0])
        wait_for(lambda: not running(pids[0]), 3.0, "the grandchild to end after close()", interval=0.02)
    finally:
        kill_leftovers(pids)


@pytest.mark.parametrize(
    ("action", "failures"),
    [("fork-hang", 1), ("popen-die", 1)],  # a worker killed at its timeout, a worker that died
)
def test_replacing_a_worker_ends_its_grandchildren(tmp_path: Path, action: str, failures: int) -> None:
    pids: list[int] = []
    try:
        with RewardScorer(process_reward, timeout_s=1.5) as scorer:
            assert scorer.score(["ok"], [""]) == ([1.0], 0)  # the worker is up: timing starts now
            assert scorer.score([f"{action}:{tmp_path}"], [""]) == ([0.0], failures)
            pids = noted_pids(tmp_path, "grandchild", 1)
            wait_for(
                lambda: not running(pids[0]),
                3.0,
                "the grandchild to end after the replacement",
                interval=0.02,
            )
            assert scorer.score(["ok", "ok"], ["", ""]) == ([1.0, 1.0], 0)  # the new worker scores
    finally:
        kill_leftovers(pids)


# --- the trainer dies or is interrupted -----------------------------------------------------------

# A trainer stand-in. It creates the scorer in the main thread or in a thread that then ends (workers
# must outlive that thread), prints its workers' pids, then waits idle or scores hanging rewards.
PARENT = """
import os, sys, threading, time
sys.path.insert(0, {tests_dir!r})
from rl_scoring_helpers import process_reward
from rlready.rl.scoring import RewardScorer

mode, creator, directory = sys.argv[1:4]
made = []
def make():
    made.append(RewardScorer(process_reward, timeout_s=120.0, num_workers=2))
    assert made[0].score(["ok"] * 2, [""] * 2) == ([1.0, 1.0], 0)
if creator == "thread":
    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
else:
    make()
scorer = made[0]
assert scorer.score(["ok"] * 4, [""] * 4) == ([1.0] * 4, 0)
print(" ".join(str(w.process.pid) for w in scorer._workers), flush=True)
if mode == "busy":
    scorer.score(["hang:" + directory] * 2, [""] * 2)
time.sleep(120)
"""


@pytest.mark.parametrize("creator", ["main", "thread"])
@pytest.mark.parametrize("mode", ["idle", "busy"])
def test_workers_end_quietly_when_the_trainer_is_killed(tmp_path: Path, mode: str, creator: str) -> None:
    stderr_path = tmp_path / "stderr.txt"
    workers: list[int] = []
    with stderr_path.open("w") as stderr:
        parent = subprocess.Popen(
            [sys.executable, "-c", PARENT.format(tests_dir=str(TESTS_DIR)), mode, creator, str(tmp_path)],
            cwd=REPO_DIR,
            stdout=subprocess.PIPE,
            stderr=stderr,  # the workers inherit it
            text=True,
        )
    try:
        line = parent.stdout.readline()
        assert line, f"the parent script failed:\n{stderr_path.read_text()}"
        workers = [int(pid) for pid in line.split()]
        assert len(workers) == 2 and all(running(pid) for pid in workers)
        if mode == "busy":
            assert sorted(noted_pids(tmp_path, "busy", 2)) == sorted(workers)
        else:
            time.sleep(0.2)
        parent.kill()
        parent.wait()
        wait_for(lambda: not any(running(pid) for pid in workers), 5.0, "the workers to end", interval=0.02)
        time.sleep(0.1)  # anything a dying worker wrote has landed
        assert "Traceback" not in stderr_path.read_text(), stderr_path.read_text()
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
        kill_leftovers(workers)


# Workers held in their start-up (a slow reward import) when Ctrl-C reaches the trainer's group.
INTERRUPTED = """
import os, signal, sys
# As a job started from a terminal: Ctrl-C unblocked and raising KeyboardInterrupt. A signal mask or an ignored
# SIGINT is inherited across exec, and the test process may carry one from an earlier test.
signal.pthread_sigmask(signal.SIG_UNBLOCK, {{signal.SIGINT}})
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, {tests_dir!r})
from rl_scoring_helpers import process_reward
from rlready.rl.scoring import RewardScorer

os.environ["RLREADY_TEST_REWARD_IMPORT_DELAY"] = "5"
scorer = RewardScorer(process_reward, timeout_s=60.0, num_workers=2)
print(" ".join(str(w.process.pid) for w in scorer._workers), flush=True)
try:
    scorer.score(["ok"], [""])
except KeyboardInterrupt:
    print("interrupted", flush=True)
finally:
    scorer.close()
"""


def test_ctrl_c_prints_no_worker_tracebacks(tmp_path: Path) -> None:
    stderr_path = tmp_path / "stderr.txt"
    workers: list[int] = []
    with stderr_path.open("w") as stderr:
        parent = subprocess.Popen(
            [sys.executable, "-c", INTERRUPTED.format(tests_dir=str(TESTS_DIR))],
            cwd=REPO_DIR,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,  # a process group of its own, like a job in a terminal
        )
    try:
        line = parent.stdout.readline()
        assert line, f"the parent script failed:\n{stderr_path.read_text()}"
        workers = [int(pid) for pid in line.split()]
        time.sleep(1.0)  # the workers are importing the reward
        os.killpg(parent.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        out, _ = parent.communicate(timeout=20)
        assert out.strip() == "interrupted", stderr_path.read_text()
        assert parent.returncode == 0
        wait_for(lambda: not any(running(pid) for pid in workers), 5.0, "the workers to end", interval=0.02)
        time.sleep(0.1)
        assert "Traceback" not in stderr_path.read_text(), stderr_path.read_text()
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
        kill_leftovers(workers)
