r"""Block NFA: binomial test on counts of large latent entries in square windows.

This is the segmentation of the first version of U-Flow (Tailanian, Pardo &
Musé, arXiv:2211.12353 v1-v2), the one anomalib shipped until 2024, run at the
authors' settings (window 5, probability threshold 0.9: ``nfa_block.py`` in
github.com/mtailanian/uflow).

Null hypothesis
    :math:`H_0`: the latent entries of a normal image are i.i.d. standard
    normal, so each :math:`z^2` is :math:`\chi^2_1` and exceeds
    :math:`\tau = F^{-1}_{\chi^2_1}(q)` (:func:`chi2_threshold`, ``q`` the
    *probability threshold*) with probability :math:`p = 1 - q`.

Test statistic
    For a latent pixel of scale ``s`` with ``C_s`` channels and a square
    window of :math:`n_{trials} = (2 r_s + 1)^2` positions around it
    (reflection padding; :math:`r_s = \max(\lfloor \lfloor w / 2^s \rfloor / 2
    \rfloor, 1)` for a window side ``w`` at the finest scale: 5, 3, 3, ... for
    ``w = 5``), let ``c`` be the number of entries of the
    :math:`n_{trials} \times C_s` window volume with :math:`z^2 > \tau` and
    :math:`k = c / C_s` its average over the channels.

Tail
    :math:`k` is treated as a :math:`\mathrm{Binomial}(n_{trials}, p)`
    count: :math:`\log_{10} P(X > \lfloor k \rfloor)` (exact binomial tail).
    Where :math:`k = n_{trials}` the tail is empty; it is clamped to
    :data:`LOG10_PROBABILITY_FLOOR` so that sums stay finite.
    ``high_precision=True`` is the authors' variant (``nfa_block.py`` and
    anomalib's ``binomial_test(..., high_precision=True)``): ``k`` is not
    floored and the tail is the integral
    :math:`\int_k^{n_{trials}} \binom{n_{trials}}{t} p^t (1 - p)^{n_{trials} - t} dt`
    of the binomial probabilities extended to real :math:`t` with the gamma
    function. It is a continuous, strictly decreasing function of ``k``; at
    integer ``k`` it lies between :math:`P(X > k)` and :math:`P(X \geq k)`
    (checked in the tests). The authors evaluate it with ``mpmath`` and
    ``scipy.integrate.quad`` pixel by pixel; here it is a table over the
    :math:`n_{trials} C_s + 1` possible counts, computed once in log space
    (composite Gauss-Legendre), so it neither underflows nor costs more than
    the default per pixel.

Number of tests and decision
    The per-scale log-probabilities are upsampled bilinearly to the output
    size and *summed* over scales (the authors sum them too; they upsample
    bicubically, here bilinearly as the anomaly maps), and
    :math:`\log_{10} \sum_s h_s w_s`, the number of tested windows, is
    added: ``log10 NFA``. A pixel is anomalous when ``log10 NFA <
    log_epsilon`` (0: NFA < 1).

The test treats the channel-averaged count as binomial, not the total
count of the :math:`n_{trials} C_s` entries, and the summed per-scale terms
as one probability: it is a heuristic bound, not an exact a-contrario
guarantee (see :mod:`skflow_ad.nfa.tree` for the current method, whose
guarantee is exact).
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np
from scipy import integrate
from scipy.special import gammaln, logsumexp
from scipy.stats import binom, chi2

from ..resample import as_map_size, resize_maps
from ._arguments import check_n_channels, check_probability_threshold, check_scale_maps, check_window_size

__all__ = [
    "LOG10_PROBABILITY_FLOOR",
    "block_log_nfa",
    "block_log_nfa_reference",
    "box_sum_reflect",
    "chi2_threshold",
    "reflect_indices",
    "window_half_width",
    "window_matrix",
    "window_count_table",
]

#: log10 of the smallest positive normal double: the value of an empty
#: binomial tail (every window entry large), so that sums over scales stay finite.
LOG10_PROBABILITY_FLOOR = float(np.log10(np.finfo(np.float64).tiny))

#: Gauss-Legendre nodes per unit of the continuous tail's integration range.
_QUADRATURE_NODES = 16


def chi2_threshold(probability_threshold):
    """Threshold ``tau`` on ``z**2`` exceeded with probability ``1 - probability_threshold``.

    The one home of the rule: an entry of a standard-normal latent is "large"
    when ``z**2 > tau``, where ``P(chi2_1 > tau) = 1 - probability_threshold``.

    Parameters
    ----------
    probability_threshold : float
        Strictly between 0 and 1; 0.9 in the U-Flow paper.

    Returns
    -------
    float
        ``scipy.stats.chi2.ppf(probability_threshold, df=1)`` (2.7055 for 0.9).
    """
    return float(chi2.ppf(check_probability_threshold(probability_threshold), df=1))


def window_half_width(window_size, scale):
    """Half-width ``r_s`` of the counting window at ``scale`` (side ``2 r_s + 1``)."""
    return max(int(window_size / 2**scale) // 2, 1)


def block_log_nfa(
    exceedance_counts, n_channels, output_size, *, window_size=5, probability_threshold=0.9, high_precision=False
):
    """log10 NFA of every pixel by the block (binomial window) test.

    Parameters
    ----------
    exceedance_counts : list of array-like of shape (n, h_s, w_s), integer
        Per scale, finest first, the number of latent channels with
        ``z**2 > chi2_threshold(probability_threshold)`` at each latent pixel.
    n_channels : list of int
        Latent channels ``C_s`` of each scale.
    output_size : int or (H, W)
        Size of the returned maps.
    window_size : int, default=5
        Side of the counting window at the finest scale (5 in the paper);
        see the module docstring for the coarser scales.
    probability_threshold : float, default=0.9
        The probability threshold the counts were made with (0.9 in the
        paper): an entry is large with probability ``1 - probability_threshold``
        under the null hypothesis.
    high_precision : bool, default=False
        Use the authors' continuous tail (the channel average is not floored),
        see the module docstring.

    Returns
    -------
    log_nfa : ndarray of shape (n, H, W), float32
        log10 NFA; lower is more anomalous, below 0 means NFA < 1.

    Raises
    ------
    ValueError
        On a malformed argument, or counts outside ``[0, C_s]``.
    """
    counts, n_channels, output_size, window_size, probability_threshold = _check_arguments(
        exceedance_counts, n_channels, output_size, window_size, probability_threshold
    )
    total = None
    n_tests = 0
    for scale, (scale_counts, channels) in enumerate(zip(counts, n_channels)):
        n_tests += scale_counts.shape[1] * scale_counts.shape[2]
        half_width = window_half_width(window_size, scale)
        n_trials = (2 * half_width + 1) ** 2
        table = window_count_table(n_trials, channels, probability_threshold, high_precision)
        log10_probability = table[box_sum_reflect(scale_counts, half_width)]
        upsampled = resize_maps(log10_probability.astype(np.float32), output_size)
        total = upsampled if total is None else total + upsampled
    return (total + np.float32(math.log10(n_tests))).astype(np.float32)


def _check_arguments(exceedance_counts, n_channels, output_size, window_size, probability_threshold):
    window_size = check_window_size(window_size)
    probability_threshold = check_probability_threshold(probability_threshold)
    output_size = as_map_size(output_size)
    counts = check_scale_maps(exceedance_counts, "exceedance_counts", "integer")
    n_channels = check_n_channels(n_channels, len(counts))
    for scale, (scale_counts, channels) in enumerate(zip(counts, n_channels)):
        if scale_counts.min() < 0 or scale_counts.max() > channels:
            raise ValueError(
                f"exceedance_counts[{scale}] must lie in [0, n_channels[{scale}]] = [0, {channels}] "
                f"(a count of channels per pixel); got values in [{scale_counts.min()}, {scale_counts.max()}]."
            )
    counts = [scale_counts.astype(np.int64, copy=False) for scale_counts in counts]
    return counts, n_channels, output_size, window_size, probability_threshold


@functools.lru_cache(maxsize=64)
def _log10_binomial_tail_table(n_trials, p_exceed):
    """``log10 P(Binomial(n_trials, p_exceed) > k)`` for ``k = 0..n_trials``, floored, read-only."""
    k = np.arange(n_trials + 1, dtype=np.float64)
    table = np.maximum(binom.logsf(k, n_trials, p_exceed) / np.log(10.0), LOG10_PROBABILITY_FLOOR)
    table.flags.writeable = False
    return table


@functools.lru_cache(maxsize=64)
def window_count_table(n_trials, n_channels, probability_threshold, high_precision=False):
    """The block test's log10 tail for every possible window count: the one lookup of :func:`block_log_nfa`.

    Parameters
    ----------
    n_trials : int
        Window positions ``(2 r + 1)**2``.
    n_channels : int
        Latent channels ``C`` of the scale.
    probability_threshold : float
        As :func:`block_log_nfa`.
    high_precision : bool, default=False
        As :func:`block_log_nfa`.

    Returns
    -------
    ndarray of shape (n_trials * n_channels + 1,), float64, read-only
        Entry ``c`` is the log10 tail of a window holding ``c`` large
        entries: the binomial tail at ``floor(c / C)``, or the continuous
        tail at ``c / C`` when ``high_precision``. Also the table of the
        exported graph's block-NFA map (:class:`skflow_ad.inference.BlockLogNFA`).
    """
    p_exceed = 1.0 - check_probability_threshold(probability_threshold)
    if high_precision:
        return _log10_continuous_tail_table(n_trials, n_channels, p_exceed)
    # Integer division: the floor of the channel average, exactly.
    table = _log10_binomial_tail_table(n_trials, p_exceed)[np.arange(n_trials * n_channels + 1) // n_channels]
    table.flags.writeable = False
    return table


def _log_continuous_binomial_density(t, n_trials, p_exceed):
    """Natural log of ``binom(n, t) p**t (1 - p)**(n - t)`` for real ``t`` in ``[0, n]``."""
    return (
        gammaln(n_trials + 1.0)
        - gammaln(t + 1.0)
        - gammaln(n_trials - t + 1.0)
        + t * np.log(p_exceed)
        + (n_trials - t) * np.log1p(-p_exceed)
    )


@functools.lru_cache(maxsize=64)
def _log10_continuous_tail_table(n_trials, n_channels, p_exceed):
    """log10 of the continuous binomial tail from ``c / n_channels`` to ``n_trials``, ``c = 0..n_trials C``.

    Composite Gauss-Legendre in log space: ``[k, n]`` is cut into
    ``n_trials`` equal pieces (each at most 1 long) of ``_QUADRATURE_NODES``
    nodes. The last entry (``k = n``, an empty range) is the floor.
    """
    k = np.arange(n_trials * n_channels + 1, dtype=np.float64) / n_channels
    nodes, weights = np.polynomial.legendre.leggauss(_QUADRATURE_NODES)
    piece = (n_trials - k) / n_trials
    starts = k[:, None] + piece[:, None] * np.arange(n_trials)  # (counts, pieces)
    t = starts[:, :, None] + piece[:, None, None] * (nodes + 1.0) / 2.0  # (counts, pieces, nodes)
    with np.errstate(divide="ignore"):
        log_terms = _log_continuous_binomial_density(t, n_trials, p_exceed) + np.log(weights * 0.5)
        log_integral = logsumexp(log_terms.reshape(len(k), -1), axis=1) + np.log(piece)
    table = np.maximum(log_integral / np.log(10.0), LOG10_PROBABILITY_FLOOR)
    table[-1] = LOG10_PROBABILITY_FLOOR
    table.flags.writeable = False
    return table


def reflect_indices(indices, size):
    """Map integer positions into ``[0, size)`` by repeated mirror reflection.

    Matches ``np.pad(..., mode="reflect")`` (edge not repeated), including
    pads wider than ``size``.
    """
    if size == 1:
        return np.zeros_like(indices)
    period = 2 * (size - 1)
    folded = np.mod(indices, period)
    return np.where(folded >= size, period - folded, folded)


def window_matrix(size, half_width):
    """``(size, size)`` matrix ``B`` with ``B @ v`` the sums of ``v`` over windows with reflection padding.

    Entry ``(i, j)`` counts how often position ``j`` falls in the window
    ``i - r .. i + r`` once reflected (:func:`reflect_indices`), so that
    ``B_h @ counts @ B_w.T`` is :func:`box_sum_reflect` of an ``(h, w)``
    map: the form of the window sums in the exported graph
    (:class:`skflow_ad.inference.BlockLogNFA`), where matrix products are fast.

    Returns
    -------
    ndarray of shape (size, size), int64
    """
    matrix = np.zeros((size, size), dtype=np.int64)
    rows = np.repeat(np.arange(size), 2 * half_width + 1)
    cols = reflect_indices(rows + np.tile(np.arange(-half_width, half_width + 1), size), size)
    np.add.at(matrix, (rows, cols), 1)
    return matrix


def box_sum_reflect(values, half_width):
    """Exact sums of integer maps over square windows with reflection padding.

    Parameters
    ----------
    values : ndarray of shape (n, h, w), integer
    half_width : int
        Window half-width ``r``; the window side is ``2 r + 1``.

    Returns
    -------
    ndarray of shape (n, h, w), int64
    """
    _, height, width = values.shape
    rows = reflect_indices(np.arange(-half_width, height + half_width), height)
    cols = reflect_indices(np.arange(-half_width, width + half_width), width)
    padded = values.astype(np.int64, copy=False)[:, rows][:, :, cols]
    # Integer cumulative sums keep the counts exact, unlike a float box filter.
    cumulative = np.pad(padded.cumsum(axis=1).cumsum(axis=2), ((0, 0), (1, 0), (1, 0)))
    side = 2 * half_width + 1
    return (
        cumulative[:, side:, side:]
        - cumulative[:, :-side, side:]
        - cumulative[:, side:, :-side]
        + cumulative[:, :-side, :-side]
    )


@functools.lru_cache(maxsize=None)
def _exact_log10_binomial_tail(k, n_trials, p_exceed):
    """``log10 P(Binomial(n_trials, p) > k)`` in exact rational arithmetic (``p`` as its double)."""
    p = Fraction(p_exceed)
    tail = sum(math.comb(n_trials, j) * p**j * (1 - p) ** (n_trials - j) for j in range(k + 1, n_trials + 1))
    if tail == 0:
        return LOG10_PROBABILITY_FLOOR
    return max(math.log10(tail.numerator) - math.log10(tail.denominator), LOG10_PROBABILITY_FLOOR)


@functools.lru_cache(maxsize=None)
def _quad_log10_continuous_tail(k, n_trials, p_exceed):
    """The continuous tail by adaptive quadrature (``scipy.integrate.quad``), scaled against underflow."""
    if k >= n_trials:
        return LOG10_PROBABILITY_FLOOR
    peak = max(_log_continuous_binomial_density(np.linspace(k, n_trials, 2001), n_trials, p_exceed))
    value, _ = integrate.quad(
        lambda t: math.exp(_log_continuous_binomial_density(t, n_trials, p_exceed) - peak),
        k, n_trials, epsabs=0.0, epsrel=1e-12, limit=200,
    )
    return max((math.log(value) + peak) / math.log(10.0), LOG10_PROBABILITY_FLOOR)


def block_log_nfa_reference(
    exceedance_counts, n_channels, output_size, *, window_size=5, probability_threshold=0.9, high_precision=False
):
    """Pixel-by-pixel implementation of :func:`block_log_nfa`, for tests.

    Window counts by explicit loops with reflected coordinates; the binomial
    tail in exact rational arithmetic, the continuous tail by adaptive
    quadrature. Same arguments and result (float64) as :func:`block_log_nfa`.
    Slow.
    """
    counts, n_channels, output_size, window_size, probability_threshold = _check_arguments(
        exceedance_counts, n_channels, output_size, window_size, probability_threshold
    )
    p_exceed = 1.0 - probability_threshold

    def reflect(position, size):
        if size == 1:
            return 0
        period = 2 * (size - 1)
        position %= period
        return period - position if position >= size else position

    n_images = counts[0].shape[0]
    result = np.zeros((n_images, *output_size))
    for scale, (scale_counts, channels) in enumerate(zip(counts, n_channels)):
        _, height, width = scale_counts.shape
        half_width = window_half_width(window_size, scale)
        n_trials = (2 * half_width + 1) ** 2
        log10_probability = np.zeros(scale_counts.shape)
        for image in range(n_images):
            for row in range(height):
                for col in range(width):
                    window_count = sum(
                        int(scale_counts[image, reflect(row + dr, height), reflect(col + dc, width)])
                        for dr in range(-half_width, half_width + 1)
                        for dc in range(-half_width, half_width + 1)
                    )
                    if high_precision:
                        value = _quad_log10_continuous_tail(window_count / channels, n_trials, p_exceed)
                    else:
                        value = _exact_log10_binomial_tail(window_count // channels, n_trials, p_exceed)
                    log10_probability[image, row, col] = value
        result += resize_maps(log10_probability, output_size)
    n_tests = sum(scale_counts.shape[1] * scale_counts.shape[2] for scale_counts in counts)
    return result + math.log10(n_tests)
