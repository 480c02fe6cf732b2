"""Argument checks shared by the NFA methods: clear errors before any work."""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

__all__ = [
    "check_latents",
    "check_log_epsilon",
    "check_n_channels",
    "check_probability_threshold",
    "check_scale_maps",
    "check_window_size",
]


def check_probability_threshold(probability_threshold):
    """Return ``probability_threshold`` as a float strictly between 0 and 1."""
    if (
        isinstance(probability_threshold, bool)
        or not isinstance(probability_threshold, Real)
        or not 0.0 < probability_threshold < 1.0
    ):
        raise ValueError(
            "probability_threshold must be a number strictly between 0 and 1 "
            f"(0.9 in the U-Flow paper), got {probability_threshold!r}."
        )
    return float(probability_threshold)


def check_window_size(window_size):
    """Return ``window_size`` as an int >= 1."""
    if isinstance(window_size, bool) or not isinstance(window_size, Integral) or window_size < 1:
        raise ValueError(f"window_size must be an integer >= 1 (5 in the U-Flow paper), got {window_size!r}.")
    return int(window_size)


def check_log_epsilon(log_epsilon):
    """Return ``log_epsilon`` as a finite float."""
    if isinstance(log_epsilon, bool) or not isinstance(log_epsilon, Real) or not math.isfinite(log_epsilon):
        raise ValueError(
            f"log_epsilon must be a finite real number (0 means at most one false "
            f"detection per image on average), got {log_epsilon!r}."
        )
    return float(log_epsilon)


def check_scale_maps(maps, name, kind):
    """Check a per-scale list of ``(n, h_s, w_s)`` statistics and return it as arrays.

    Parameters
    ----------
    maps : list of array-like
        One array per scale, finest first.
    name : str
        Argument name for the error messages.
    kind : {"integer", "real"}
        Required dtype kind.

    Returns
    -------
    list of ndarray
    """
    if not isinstance(maps, (list, tuple)) or len(maps) == 0:
        raise ValueError(
            f"{name} must be a non-empty list with one (n, h, w) array per scale, finest first; "
            f"got {type(maps).__name__}" + (" of length 0." if isinstance(maps, (list, tuple)) else ".")
        )
    arrays = []
    for scale, values in enumerate(maps):
        values = np.asarray(values)
        if values.ndim != 3:
            raise ValueError(f"{name}[{scale}] must be 3-d (n, h, w), got shape {values.shape}.")
        if min(values.shape) == 0:
            raise ValueError(f"{name}[{scale}] is empty: shape {values.shape}.")
        if kind == "integer" and not np.issubdtype(values.dtype, np.integer):
            raise ValueError(
                f"{name}[{scale}] must hold integers (counts of channels), got dtype {values.dtype}."
            )
        if kind == "real" and not (np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)):
            raise ValueError(f"{name}[{scale}] must hold real numbers, got dtype {values.dtype}.")
        arrays.append(values)
    n_images = {values.shape[0] for values in arrays}
    if len(n_images) != 1:
        raise ValueError(
            f"All {name} must have the same number of images n; got shapes {[values.shape for values in arrays]}."
        )
    return arrays


def check_n_channels(n_channels, n_scales):
    """Return ``n_channels`` as a list of ``n_scales`` ints >= 1."""
    if not isinstance(n_channels, (list, tuple)) or len(n_channels) != n_scales:
        raise ValueError(
            f"n_channels must be a list with the number of latent channels of each of the {n_scales} "
            f"scales; got {n_channels!r}."
        )
    for scale, channels in enumerate(n_channels):
        if isinstance(channels, bool) or not isinstance(channels, Integral) or channels < 1:
            raise ValueError(f"n_channels[{scale}] must be an integer >= 1, got {channels!r}.")
    return [int(channels) for channels in n_channels]


def check_latents(latents):
    """Check a per-scale list of ``(n, C_s, h_s, w_s)`` latents and return it as floating arrays."""
    if not isinstance(latents, (list, tuple)) or len(latents) == 0:
        raise ValueError(
            "latents must be a non-empty list with one (n, C, h, w) array per scale, finest first; "
            f"got {type(latents).__name__}" + (" of length 0." if isinstance(latents, (list, tuple)) else ".")
        )
    arrays = []
    for scale, z in enumerate(latents):
        try:
            z = np.asarray(z)
        except (TypeError, RuntimeError) as exc:  # e.g. a torch tensor that requires grad
            raise ValueError(
                f"latents[{scale}] cannot be read as a numpy array ({exc}); pass numpy arrays "
                f"(for torch tensors: z.detach().cpu().numpy())."
            ) from None
        if z.ndim != 4:
            raise ValueError(f"latents[{scale}] must be 4-d (n, C, h, w), got shape {z.shape}.")
        if not np.issubdtype(z.dtype, np.floating):
            raise ValueError(f"latents[{scale}] must have a floating dtype, got {z.dtype}.")
        if min(z.shape[1:]) == 0:
            raise ValueError(f"latents[{scale}] has an empty channel or spatial dimension: shape {z.shape}.")
        arrays.append(z)
    if len({z.shape[0] for z in arrays}) != 1:
        raise ValueError(
            f"All latents must have the same number of images n; got shapes {[z.shape for z in arrays]}."
        )
    return arrays
