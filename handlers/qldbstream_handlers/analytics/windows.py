"""Event-time windows: durations, and which windows an event time falls into.

Times are integer milliseconds since the epoch (a revision's ``txTime`` has millisecond precision).
Windows are half-open, ``[start, end)``, aligned to the epoch (a 1-minute tumbling window starts on
a whole minute, UTC).

=================  =========================  ===============================================
kind               setting                    windows of an event at ``t``
=================  =========================  ===============================================
:class:`Tumbling`  ``tumbling:1m``            the one window ``[k*size, (k+1)*size)`` holding t
:class:`Hopping`   ``hopping:5m/1m``          every ``[k*slide, k*slide+size)`` holding t
:class:`Session`   ``session:10m``            ``[t, t+gap)``, merged with every overlapping one
=================  =========================  ===============================================
"""

from __future__ import annotations

import re
from datetime import timedelta

from qldbstream.api import ConfigurationError

__all__ = ["Duration", "Hopping", "Session", "Tumbling", "Window", "duration_ms", "parse_window"]

#: What the Python API accepts for a duration: ``"90s"``, ``"1m"``, milliseconds, or a timedelta.
Duration = str | int | timedelta

_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")


def duration_ms(value: Duration, what: str = "duration") -> int:
    """Milliseconds of ``value``: ``"500ms"``, ``"30s"``, ``"1m"``, ``"2h"``, ``"1d"``, int, timedelta."""
    if isinstance(value, timedelta):
        ms = value // timedelta(milliseconds=1)
    elif isinstance(value, int) and not isinstance(value, bool):
        ms = value
    elif isinstance(value, str):
        m = _DURATION.match(value)
        if m is None:
            raise ConfigurationError(f"{what}: {value!r} is not a duration such as 500ms, 30s, 1m, 2h or 1d")
        ms = int(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ConfigurationError(f"{what}: {value!r} is not a duration")
    if ms < 0:
        raise ConfigurationError(f"{what} must not be negative")
    return ms


def _text(ms: int) -> str:
    for unit in ("d", "h", "m", "s"):
        if ms and ms % _UNITS[unit] == 0:
            return f"{ms // _UNITS[unit]}{unit}"
    return f"{ms}ms"


class Tumbling:
    """Fixed, non-overlapping windows of ``size``."""

    __slots__ = ("size",)
    kind = "tumbling"

    def __init__(self, size: Duration) -> None:
        self.size = duration_ms(size, "tumbling window size")
        if self.size <= 0:
            raise ConfigurationError("a tumbling window needs a positive size")

    def assign(self, t: int) -> list[tuple[int, int]]:
        start = t - t % self.size
        return [(start, start + self.size)]

    def spec(self) -> str:
        return f"tumbling:{_text(self.size)}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tumbling) and other.size == self.size

    def __hash__(self) -> int:
        return hash(self.spec())

    def __repr__(self) -> str:
        return f"Tumbling({_text(self.size)!r})"


class Hopping:
    """Overlapping windows of ``size`` starting every ``slide`` (``size`` a multiple of ``slide``)."""

    __slots__ = ("size", "slide")
    kind = "hopping"

    def __init__(self, size: Duration, slide: Duration) -> None:
        self.size = duration_ms(size, "hopping window size")
        self.slide = duration_ms(slide, "hopping window slide")
        if self.slide <= 0 or self.size <= 0:
            raise ConfigurationError("a hopping window needs a positive size and slide")
        if self.size % self.slide:
            raise ConfigurationError(
                f"a hopping window's size ({_text(self.size)}) must be a multiple of its slide "
                f"({_text(self.slide)})"
            )

    def assign(self, t: int) -> list[tuple[int, int]]:
        last = t - t % self.slide
        return [(s, s + self.size) for s in range(last - self.size + self.slide, last + 1, self.slide)]

    def spec(self) -> str:
        return f"hopping:{_text(self.size)}/{_text(self.slide)}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Hopping) and (other.size, other.slide) == (self.size, self.slide)

    def __hash__(self) -> int:
        return hash(self.spec())

    def __repr__(self) -> str:
        return f"Hopping({_text(self.size)!r}, {_text(self.slide)!r})"


class Session:
    """Per-group activity sessions: a session ends after ``gap`` without events."""

    __slots__ = ("gap",)
    kind = "session"

    def __init__(self, gap: Duration) -> None:
        self.gap = duration_ms(gap, "session gap")
        if self.gap <= 0:
            raise ConfigurationError("a session window needs a positive gap")

    def assign(self, t: int) -> list[tuple[int, int]]:
        """The event's own window; the engine merges it with overlapping sessions."""
        return [(t, t + self.gap)]

    def spec(self) -> str:
        return f"session:{_text(self.gap)}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Session) and other.gap == self.gap

    def __hash__(self) -> int:
        return hash(self.spec())

    def __repr__(self) -> str:
        return f"Session({_text(self.gap)!r})"


Window = Tumbling | Hopping | Session


def parse_window(text: str) -> Window:
    """``tumbling:1m``, ``hopping:5m/1m`` or ``session:10m``."""
    kind, _, rest = text.strip().partition(":")
    kind = kind.strip().lower()
    if kind == "tumbling" and rest:
        return Tumbling(rest)
    if kind == "hopping" and "/" in rest:
        size, _, slide = rest.partition("/")
        return Hopping(size, slide)
    if kind == "session" and rest:
        return Session(rest)
    raise ConfigurationError(
        f"window {text!r}: expected tumbling:SIZE, hopping:SIZE/SLIDE or session:GAP (e.g. tumbling:1m)"
    )
