"""Rewards for tests/test_rl_scoring_procs.py that misbehave with processes.

Spawned reward workers import this module to unpickle the rewards, so it stays free of torch and
pytest. A completion reads ``"<action>:<directory>"``; the reward leaves its marks in the directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

# Set by a test's parent script after its own import: spawned workers then take this long to import
# the reward, which holds them in their start-up, before the scorer's worker code runs.
_import_delay = float(os.environ.get("RLREADY_TEST_REWARD_IMPORT_DELAY", "0"))
if _import_delay > 0:
    time.sleep(_import_delay)


def _note(directory: str, name: str, pid: int) -> None:
    """Write ``pid`` to ``directory/name-<pid>`` atomically (the test polls for the file)."""
    tmp = Path(directory, f".{name}-{pid}.tmp")
    tmp.write_text(str(pid))
    tmp.rename(Path(directory, f"{name}-{pid}"))


def _fork_sleeper(directory: str) -> None:
    """Fork a grandchild that notes its pid and sleeps for a minute."""
    pid = os.fork()
    if pid == 0:
        try:
            _note(directory, "grandchild", os.getpid())
            time.sleep(60)
        finally:
            os._exit(0)


def _start_sleeper(directory: str) -> None:
    """Start a sleeping subprocess (a verifier left running) and note its pid."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    _note(directory, "grandchild", proc.pid)


def process_reward(completion: str, answer: str) -> float:
    """1.0 for ``ok``; the other actions fork, start subprocesses, hang or die."""
    action, _, directory = completion.partition(":")
    if action == "ok":
        return 1.0
    if action == "fork":
        _fork_sleeper(directory)
        return 1.0
    if action == "fork-hang":
        _fork_sleeper(directory)
        time.sleep(60)
    if action == "popen-die":
        _start_sleeper(directory)
        os._exit(3)
    if action == "hang":
        _note(directory, "busy", os.getpid())
        time.sleep(60)
    raise ValueError(f"unknown action {action!r}")
