"""The checks behind every validation error: the field, the value, and what it must be."""
import math
import numbers
from typing import Any, Sequence


def check_choice(field: str, value: Any, choices: Sequence[Any]) -> None:
  """Raises ValueError unless `value` is one of `choices`; `field` is its full name."""
  if value not in choices:
    raise ValueError(f"Bad value {field}={value!r}: expected one of {tuple(choices)}.")


def check(field: str, value: Any, ok: bool, expected: str) -> None:
  """Raises ValueError naming `field` and `value` unless `ok`; `expected` says what is."""
  if not ok:
    raise ValueError(f"Bad value {field}={value!r}: expected {expected}.")


def check_bool(field: str, value: Any) -> None:
  """Raises ValueError unless `value` is True or False (None is neither)."""
  check(field, value, isinstance(value, bool), "True or False")


def check_number(field: str, value: Any, *, low: float = -math.inf, high: float = math.inf,
                 low_open: bool = False, high_open: bool = False, integer: bool = False,
                 optional: bool = False) -> None:
  """Raises ValueError unless `value` is a finite number (an int if `integer`) within the
  bounds (`low`/`high` excluded when `*_open`); None passes only if `optional`. NaN and Inf
  never pass."""
  if optional and value is None:
    return
  bounds = []
  if low > -math.inf:
    bounds.append(f"{'>' if low_open else '>='} {low:g}")
  if high < math.inf:
    bounds.append(f"{'<' if high_open else '<='} {high:g}")
  expected = " and ".join(
      [("an integer" if integer else "a finite number") + (f" {bounds[0]}" if bounds else "")]
      + bounds[1:]) + (" (or None)" if optional else "")
  kind = numbers.Integral if integer else numbers.Real
  ok = (isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
        and (value > low if low_open else value >= low)
        and (value < high if high_open else value <= high))
  check(field, value, ok, expected)
