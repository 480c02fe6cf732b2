"""The prediction network of a fitted image detector, as one module.

:class:`InferenceNetwork` is the whole path from a batch of images at the
working size to the outputs that :mod:`skflow_ad.prediction` turns into scores,
maps, masks and regions: cast and scale, gray to three channels, the
extractor's normalisation, the frozen extractor, the flow, and the
detector's head. The detectors run it (eagerly or compiled); exported models
are this module, traced.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .nfa.block import window_count_table, window_half_width, window_matrix
from .resample import interpolation_matrix


def latent_energies(latents):
    """``sum_c z**2`` per scale: list of ``(n, h_s, w_s)``."""
    return [z.pow(2).sum(1) for z in latents]


def latent_exceedances(latents, chi2_threshold):
    """Number of channels with ``z**2 > chi2_threshold`` per scale: list of ``(n, h_s, w_s)`` int32."""
    return [(z.pow(2) > chi2_threshold).sum(1, dtype=torch.int32) for z in latents]


class Preprocess(nn.Module):
    """``(n, H, W, C)`` uint8 (0-255) or float ([0, 1]) images -> normalised ``(n, 3, H, W)`` float32.

    Gray images are repeated on three channels; ``(x - mean) / std`` with the
    extractor's declared normalisation.
    """

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images):
        x = images.permute(0, 3, 1, 2)
        x = x.to(torch.float32) / 255.0 if images.dtype == torch.uint8 else x.to(torch.float32)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std


class InferenceNetwork(nn.Module):
    """Images at the working size -> ``(scores, anomaly_maps, *energies, *exceedances)``.

    Parameters
    ----------
    extractor : FeatureExtractor
        Frozen; its ``mean`` and ``std`` normalise the images.
    flow : nn.Module
        ``flow(features) -> (latents, log_jac_det)``, latents finest first.
    head : nn.Module
        ``head(latents) -> (scores (n,), anomaly_maps (n, H, W))`` at the working size.

    Notes
    -----
    ``forward(images, chi2_threshold)`` takes ``images`` of shape
    ``(n, H, W, C)``, ``C`` in {1, 3}, either ``uint8`` (0-255) or float in
    [0, 1], and a 0-d float tensor, the block-NFA threshold on ``z**2``. It
    returns ``2 + 2 S`` tensors for ``S`` latent scales: image anomaly scores
    ``(n,)``, anomaly maps ``(n, H, W)``, then per scale the latent energy
    ``(n, h_s, w_s)``, then per scale the exceedance counts ``(n, h_s, w_s)``
    (see :class:`skflow_ad.prediction.NetworkOutputs`).
    """

    def __init__(self, extractor, flow, head):
        super().__init__()
        self.preprocess = Preprocess(extractor.mean, extractor.std)
        self.extractor = extractor
        self.flow = flow
        self.head = head

    def features(self, images):
        """The extractor's maps of ``images`` (as ``forward`` takes them)."""
        return self.extractor(self.preprocess(images))

    def from_features(self, features, chi2_threshold):
        """The outputs of ``forward`` from the extractor's maps."""
        latents, _ = self.flow([f.to(torch.float32) for f in features])
        scores, maps = self.head(latents)
        return (scores, maps, *latent_energies(latents), *latent_exceedances(latents, chi2_threshold))

    def forward(self, images, chi2_threshold):
        return self.from_features(self.features(images), chi2_threshold)


class BlockLogNFA(nn.Module):
    """Exceedance counts per scale -> the block-NFA ``log10 NFA`` map at the working size, in torch.

    :func:`skflow_ad.nfa.block_log_nfa` as a module of fixed geometry, for
    the exported graph (``export_onnx(..., block_nfa_map=True)``), written as
    matrix products, which runtimes run fast: per scale the window sums are
    ``B_h @ counts @ B_w.T`` (:func:`skflow_ad.nfa.block.window_matrix`,
    reflection padding included), the tail a lookup in
    :func:`skflow_ad.nfa.block.window_count_table`, and the bilinear
    upsampling ``R_H @ tail @ R_W.T`` with the matrices numpy's
    :func:`skflow_ad.resample.resize_maps` uses; then the sum over scales.

    Parameters
    ----------
    latent_shapes : list of (C, h, w)
        Finest scale first.
    output_size : (int, int)
        ``(H, W)`` of the map.
    window_size, probability_threshold, high_precision
        As :func:`skflow_ad.nfa.block_log_nfa`.

    Notes
    -----
    ``forward(exceedances)`` takes the per-scale counts ``(n, h_s, w_s)``
    (int) and returns ``(n, H, W)`` float32. The window sums are integers
    below ``2**24``, exact in float32 whatever order the products add them
    in, and rounded before the lookup; the map then differs from numpy's by
    float32 rounding of the upsampling and the sum only.
    """

    def __init__(self, latent_shapes, output_size, *, window_size, probability_threshold, high_precision):
        super().__init__()
        height, width = (int(v) for v in output_size)
        for scale, (channels, rows, cols) in enumerate(latent_shapes):
            half_width = window_half_width(window_size, scale)
            table = window_count_table((2 * half_width + 1) ** 2, channels, probability_threshold, high_precision)
            constants = {
                "table": table,
                "window_rows": window_matrix(rows, half_width),
                "window_cols": window_matrix(cols, half_width).T,
                "upsample_rows": interpolation_matrix(rows, height),
                "upsample_cols": interpolation_matrix(cols, width).T,
            }
            for name, value in constants.items():
                self.register_buffer(f"{name}_{scale}", torch.tensor(value, dtype=torch.float32), persistent=False)
        self.log10_n_tests = float(np.float32(math.log10(sum(h * w for _, h, w in latent_shapes))))

    def _constant(self, name, scale):
        return getattr(self, f"{name}_{scale}")

    def forward(self, exceedances):
        total = None
        for scale, counts in enumerate(exceedances):
            window_counts = self._constant("window_rows", scale) @ counts.to(torch.float32) @ \
                self._constant("window_cols", scale)
            log10_probability = self._constant("table", scale)[window_counts.round().to(torch.int64)]
            upsampled = self._constant("upsample_rows", scale) @ log10_probability @ \
                self._constant("upsample_cols", scale)
            total = upsampled if total is None else total + upsampled
        return total + self.log10_n_tests
