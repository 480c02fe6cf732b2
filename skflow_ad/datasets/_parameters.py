"""Parameter checks shared by the data sources of :mod:`skflow_ad.datasets`."""

from __future__ import annotations

# The image-size and bool rules and the integer test have their home with the other input rules.
from .._validation import check_bool, check_image_size, is_integer

__all__ = ["check_bool", "check_count", "check_image_size", "is_integer"]


def check_count(value, name):
    """``value`` as a non-negative int; ``ValueError`` naming ``name`` otherwise."""
    if not is_integer(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}.")
    return int(value)
