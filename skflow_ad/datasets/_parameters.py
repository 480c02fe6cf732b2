"""Parameter checks shared by the data sources of :mod:`skflow_ad.datasets`."""

from __future__ import annotations

from numbers import Integral

import numpy as np

__all__ = ["check_bool", "check_count", "check_image_size", "is_integer"]


def is_integer(value):
    """Whether ``value`` is an integer (numpy integers included), not a bool."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def check_image_size(image_size, *, allow_none, minimum=1):
    """``image_size`` as a ``(height, width)`` tuple of ints, or None.

    An int means a square image; a pair means ``(height, width)``.

    Raises
    ------
    TypeError
        If ``image_size`` is neither an int nor a pair of ints (nor None when
        ``allow_none``).
    ValueError
        If a side is below ``minimum``.
    """
    if image_size is None and allow_none:
        return None
    if is_integer(image_size):
        size = (int(image_size), int(image_size))
    elif (
        isinstance(image_size, (tuple, list))
        and len(image_size) == 2
        and all(is_integer(side) for side in image_size)
    ):
        size = (int(image_size[0]), int(image_size[1]))
    else:
        expected = "None, " if allow_none else ""
        raise TypeError(
            f"image_size must be {expected}an int (square images) or a (height, width) "
            f"pair of ints, got {image_size!r}."
        )
    if min(size) < minimum:
        raise ValueError(f"image_size must be at least {minimum} pixels on each side, got {image_size!r}.")
    return size


def check_count(value, name):
    """``value`` as a non-negative int; ``ValueError`` naming ``name`` otherwise."""
    if not is_integer(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}.")
    return int(value)


def check_bool(value, name):
    """``value`` as a bool; ``TypeError`` naming ``name`` unless it is True or False."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}.")
    return bool(value)
