"""NFA maps and masks straight from flow latents (numpy arrays)."""

from __future__ import annotations

import numpy as np

from ._arguments import check_latents, check_log_epsilon, check_probability_threshold
from .block import block_log_nfa, chi2_threshold
from .tree import tree_log_nfa

__all__ = ["METHODS", "latent_statistics", "log_nfa", "nfa_mask"]

#: The NFA methods and the keyword parameters each accepts.
METHODS = {
    "tree": ("count",),
    "block": ("window_size", "probability_threshold", "high_precision"),
}


def latent_statistics(latents, probability_threshold=None):
    """Per-pixel statistics the NFA methods need, from latents.

    Parameters
    ----------
    latents : list of array-like of shape (n, C_s, h_s, w_s)
        Flow latents, one floating array per scale, finest first, all with
        the same ``n``; standard normal on normal images.
    probability_threshold : float, optional
        Also count, per pixel, the channels with
        ``z**2 > chi2_threshold(probability_threshold)`` (for the block method).

    Returns
    -------
    energies : list of ndarray of shape (n, h_s, w_s), float32
        ``sum_c z**2`` per latent pixel (for the tree method).
    counts : list of ndarray of shape (n, h_s, w_s), int32
        Only when ``probability_threshold`` is given: ``(energies, counts)``.
    """
    latents = check_latents(latents)
    threshold = None if probability_threshold is None else chi2_threshold(probability_threshold)
    energies, counts = [], []
    for z in latents:
        squared = np.square(z, dtype=np.float32)
        energies.append(squared.sum(axis=1, dtype=np.float32))
        if threshold is not None:
            counts.append(np.count_nonzero(squared > threshold, axis=1).astype(np.int32))
    return energies if threshold is None else (energies, counts)


def _check_method(method, kwargs):
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}.")
    unknown = sorted(set(kwargs) - set(METHODS[method]))
    if unknown:
        accepted = ", ".join(METHODS[method]) or "none"
        raise ValueError(f"method={method!r} does not take {', '.join(unknown)}; its parameters: {accepted}.")


def log_nfa(latents, output_size, *, method="tree", **kwargs):
    """log10 NFA of every pixel, from latents.

    Parameters
    ----------
    latents : list of array-like of shape (n, C_s, h_s, w_s)
        Flow latents, one floating array per scale, finest first.
    output_size : int or (H, W)
        Size of the returned maps.
    method : {"tree", "block"}, default="tree"
        ``"tree"``: :func:`~skflow_ad.nfa.tree_log_nfa`, the current U-Flow
        test; ``"block"``: :func:`~skflow_ad.nfa.block_log_nfa`, the first one.
    **kwargs
        Of the tree method: ``count`` (``"all_sizes"``, the paper's, or
        ``"per_size"``). Of the block method: ``window_size`` (5),
        ``probability_threshold`` (0.9), ``high_precision`` (False).

    Returns
    -------
    log_nfa : ndarray of shape (n, H, W), float32
        Lower is more anomalous; below 0 means NFA < 1.
    """
    _check_method(method, kwargs)
    latents = check_latents(latents)
    n_channels = [z.shape[1] for z in latents]
    if method == "tree":
        return tree_log_nfa(latent_statistics(latents), n_channels, output_size, **kwargs)
    probability_threshold = check_probability_threshold(kwargs.pop("probability_threshold", 0.9))
    _, counts = latent_statistics(latents, probability_threshold)
    return block_log_nfa(counts, n_channels, output_size, probability_threshold=probability_threshold, **kwargs)


def nfa_mask(latents, output_size, *, method="tree", log_epsilon=0.0, **kwargs):
    """Anomalous pixels: ``log_nfa(...) < log_epsilon``.

    Parameters
    ----------
    latents : list of array-like of shape (n, C_s, h_s, w_s)
        Flow latents, one floating array per scale, finest first.
    output_size : int or (H, W)
        Size of the returned masks.
    method : {"tree", "block"}, default="tree"
        See :func:`log_nfa`.
    log_epsilon : float, default=0.0
        log10 of the NFA threshold ``epsilon``: on normal images at most
        ``epsilon`` false detections are expected per image (0: one).
    **kwargs
        Parameters of the method, see :func:`log_nfa`.

    Returns
    -------
    masks : ndarray of shape (n, H, W), bool
        True on anomalous pixels.
    """
    log_epsilon = check_log_epsilon(log_epsilon)
    return log_nfa(latents, output_size, method=method, **kwargs) < log_epsilon
