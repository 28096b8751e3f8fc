"""Shared fixtures: ``lm_runs`` (the tiny LM-stage runs several test modules make)."""

pytest_plugins = ["lm_runs"]
