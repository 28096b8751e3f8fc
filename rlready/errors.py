"""Errors that end a command with a one-line message (kept free of heavy imports for the CLI)."""

import signal


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. repeated non-finite losses); reported in one line."""


class Interrupted(RuntimeError):
    """SIGTERM/SIGINT: a checkpoint was written; the same command resumes."""


def interrupted(signum: int, phase: str) -> Interrupted:
    """A signal outside the training loop: nothing to checkpoint, and every write there is atomic."""
    return Interrupted(
        f"interrupted by {signal.Signals(signum).name} during {phase}; run the same command to resume"
    )
