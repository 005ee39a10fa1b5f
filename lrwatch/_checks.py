"""Argument checks shared by the public constructors: a clear ValueError naming the argument."""

from __future__ import annotations

import numpy as np


def require_int(name: str, value, minimum: int = 1, integer_types: tuple[type, ...] = (int,)) -> int:
    """``value`` if it is an int (not a bool) >= ``minimum``, else ValueError naming ``name``.
    ``integer_types``: what counts as an int (numpy integers too, for option dataclasses)."""
    if isinstance(value, bool) or not isinstance(value, integer_types) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def require_bool(name: str, value) -> bool:
    """``value`` if it is a bool (numpy's too), else ValueError naming ``name``: a string such as "False" is
    truthy, and would silently switch an option on."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def require_positive_int_fields(options, *names: str) -> None:
    """`require_int` (>= 1) on each named attribute of an options dataclass, numpy integers accepted
    (options are often read from arrays or config files); ValueError naming the first bad one."""
    for name in names:
        require_int(name, getattr(options, name), integer_types=(int, np.integer))
