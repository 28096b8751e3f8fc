"""rlready: next-token prediction as a reward-shaped one-step policy gradient, and the study around it."""

__version__ = "0.1.0"
