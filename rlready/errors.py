"""Errors that end a command with a one-line message (kept free of heavy imports for the CLI)."""


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. repeated non-finite losses); reported in one line."""


class Interrupted(RuntimeError):
    """SIGTERM/SIGINT: a checkpoint was written; the same command resumes."""
