"""Schedules of a loss knob over training progress in [0, 1].

The paper tests constant ``beta`` / ``lam`` only and names schedules as an open question
(docs/method.md §4.6); a knob given as a schedule is evaluated by the trainer with the fraction of training
done.

A schedule is an immutable value (equal, hashable and picklable by its numbers) that also keeps the text it
was parsed from: ``str()`` gives that text back, so a saved configuration is written exactly as it was
given (a run directory's config.json is compared as text when the run is resumed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

from .schemes import TokenWeighting


@runtime_checkable
class Schedule(Protocol):
    def __call__(self, progress: float) -> float: ...


def _clamp(progress: float) -> float:
    return min(1.0, max(0.0, float(progress)))


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"schedule {name} must be finite, got {value!r}")
    return value


@dataclass(frozen=True)
class Constant:
    value: float
    text: str | None = field(default=None, compare=False, repr=False)  # as parsed; see the module docstring

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", _finite("value", self.value))

    def __call__(self, progress: float) -> float:
        return self.value

    def __str__(self) -> str:
        return self.text if self.text is not None else repr(self.value)


@dataclass(frozen=True)
class _Ramp:
    """From ``start`` at progress 0 to ``end`` at progress 1; ``kind`` names the shape in its text form."""

    kind: ClassVar[str]
    start: float
    end: float
    text: str | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", _finite("start", self.start))
        object.__setattr__(self, "end", _finite("end", self.end))

    def __str__(self) -> str:
        return self.text if self.text is not None else f"{self.kind}:{self.start!r}:{self.end!r}"


@dataclass(frozen=True)
class Linear(_Ramp):
    kind = "linear"

    def __call__(self, progress: float) -> float:
        return self.start + (self.end - self.start) * _clamp(progress)


@dataclass(frozen=True)
class Cosine(_Ramp):
    """Half-cosine from ``start`` at progress 0 to ``end`` at progress 1."""

    kind = "cosine"

    def __call__(self, progress: float) -> float:
        return self.end + (self.start - self.end) * (1.0 + math.cos(math.pi * _clamp(progress))) / 2.0


_KINDS = {shape.kind: shape for shape in (Linear, Cosine)}
SCHEDULES = (Constant, Linear, Cosine)


def parse_schedule(spec: str | float | int | Schedule) -> Schedule:
    """``-0.25`` / ``"-0.25"`` -> Constant; ``"linear:START:END"``; ``"cosine:START:END"``.

    A schedule parsed from a string keeps it as its ``str()``; a schedule is returned as it is.
    """
    if isinstance(spec, SCHEDULES):
        return spec
    if isinstance(spec, bool):
        raise ValueError(f"bad schedule {spec!r}: expected a number or 'linear|cosine:START:END'")
    if isinstance(spec, (int, float)):
        return Constant(spec)
    if not isinstance(spec, str):
        raise ValueError(f"bad schedule {spec!r}: expected a number or 'linear|cosine:START:END'")
    parts = spec.strip().split(":")
    try:
        if len(parts) == 1:
            return Constant(float(parts[0]), spec)
        if len(parts) == 3 and parts[0].lower() in _KINDS:
            return _KINDS[parts[0].lower()](float(parts[1]), float(parts[2]), spec)
    except ValueError as err:
        raise ValueError(f"bad schedule {spec!r}: {err}") from None
    raise ValueError(f"bad schedule {spec!r}: expected a number or 'linear|cosine:START:END'")


def weighting_at(
    progress: float, beta: Schedule, lam_head: Schedule, lam_tail: Schedule, k: int | float
) -> TokenWeighting:
    """The paper's weighting (docs/method.md §3) with each knob's schedule evaluated at ``progress``."""
    return TokenWeighting(beta=beta(progress), lam_head=lam_head(progress), lam_tail=lam_tail(progress), k=k)
