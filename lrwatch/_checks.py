"""Argument checks shared by the public constructors: a clear ValueError naming the argument."""

from __future__ import annotations

import numpy as np


def require_int(name: str, value, minimum: int = 1, integer_types: tuple[type, ...] = (int,)) -> int:
    """``value`` if it is an int (not a bool) >= ``minimum``, else ValueError naming ``name``.
    ``integer_types``: what counts as an int (numpy integers too, for option dataclasses)."""
    if isinstance(value, bool) or not isinstance(value, integer_types) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def require_positive_int_fields(options, *names: str) -> None:
    """`require_int` (>= 1) on each named attribute of an options dataclass, numpy integers accepted
    (options are often read from arrays or config files); ValueError naming the first bad one."""
    for name in names:
        require_int(name, getattr(options, name), integer_types=(int, np.integer))
