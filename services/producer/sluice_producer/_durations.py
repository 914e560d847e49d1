"""The delay of a task as text (``"30s"``, ``"1500ms"``, ``"2h"``), bounded by a regular expression.

The OpenAPI document must say exactly what the server accepts, and JSON Schema cannot compare the
number inside a string: so the bound (at most 30 days) is part of the pattern itself, one branch per
unit, each allowing only numbers up to that unit's limit. The server checks the same pattern
(:func:`delay_seconds`), so a string is accepted if and only if the published pattern matches it.

The pattern uses only ASCII classes (``[0-9]``, spaces) so that Python's ``re``, JSON Schema's
ECMA-262 dialect and Rust's ``regex`` read it alike.
"""

from __future__ import annotations

import re

__all__ = ["DURATION_PATTERN", "MAX_DELAY_S", "delay_seconds"]

MAX_DELAY_S = 30 * 86400

# unit spellings (any letter case), and how many of them make the maximum
_UNITS: tuple[tuple[tuple[str, ...], float, int], ...] = (
    (("ms",), 0.001, MAX_DELAY_S * 1000),
    (("", "s", "sec"), 1.0, MAX_DELAY_S),
    (("m", "min"), 60.0, MAX_DELAY_S // 60),
    (("h", "hour"), 3600.0, MAX_DELAY_S // 3600),
    (("d", "day"), 86400.0, MAX_DELAY_S // 86400),
)


def _below(n: int) -> str:
    """A regex for the decimal integers 0 <= i < n written without leading zeros (n >= 1)."""
    digits = str(n)
    size = len(digits)
    alts = ["[0-9]"] if size > 1 else []
    if size > 2:
        alts.append(f"[1-9][0-9]{{1,{size - 2}}}")
    for i, d in enumerate(digits):  # same length: equal up to position i, then a smaller digit
        low = 1 if i == 0 and size > 1 else 0  # no leading zero, except for 0 itself
        if int(d) > low:
            top = int(d) - 1
            cls = str(low) if top == low else f"[{low}-{top}]"
            rest = size - i - 1
            alts.append(digits[:i] + cls + (f"[0-9]{{{rest}}}" if rest else ""))
    return "(?:" + "|".join(alts) + ")"


def _at_most(n: int) -> str:
    """A regex for the decimal numbers (``12``, ``12.``, ``12.5``, ``.5``, leading zeros allowed) <= n."""
    return f"(?:0*(?:{_below(n)}(?:\\.[0-9]*)?|{n}(?:\\.0*)?)|\\.[0-9]+)"


def _spelled(unit: str) -> str:
    return "".join(f"[{c}{c.upper()}]" for c in unit)


def _branch(units: tuple[str, ...], limit: int) -> str:
    names = [_spelled(u) for u in units if u]
    unit = "(?:" + "|".join(names) + ")"
    return f"{_at_most(limit)} *{unit}{'?' if '' in units else ''}"


DURATION_PATTERN = "^ *(?:" + "|".join(_branch(u, limit) for u, _, limit in _UNITS) + ") *$"
_DURATION = re.compile(DURATION_PATTERN)
_PARTS = re.compile(r"^ *([0-9]*\.?[0-9]*) *([A-Za-z]*) *$")
_FACTOR = {name: factor for names, factor, _ in _UNITS for name in names}


def delay_seconds(text: str) -> float:
    """Seconds of a duration string; ValueError (a message for the user) unless it matches
    :data:`DURATION_PATTERN` (a number with ms, s, m, h or d, at most 30 days)."""
    parts = _PARTS.match(text) if _DURATION.fullmatch(text) else None
    if parts is None:
        raise ValueError(
            f"bad delay {text!r}: use seconds as a number, or a number with ms, s, m, h or d "
            "(e.g. 30s, 1500ms), at most 30 days"
        )
    number, unit = parts.groups()
    return min(float(number) * _FACTOR[unit.lower()], float(MAX_DELAY_S))
