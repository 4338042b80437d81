"""The two checks behind every validation error: the field, the value, and what it must be."""
from typing import Any, Sequence


def check_choice(field: str, value: Any, choices: Sequence[Any]) -> None:
  """Raises ValueError unless `value` is one of `choices`; `field` is its full name."""
  if value not in choices:
    raise ValueError(f"Bad value {field}={value!r}: expected one of {tuple(choices)}.")


def check(field: str, value: Any, ok: bool, expected: str) -> None:
  """Raises ValueError naming `field` and `value` unless `ok`; `expected` says what is."""
  if not ok:
    raise ValueError(f"Bad value {field}={value!r}: expected {expected}.")
