r"""A-contrario anomaly segmentation from normalizing-flow latents.

A normalizing flow trained on normal images maps them to latents whose
entries are, under the null hypothesis :math:`H_0` ("this region is
normal"), independent standard normal variables. Each squared entry
:math:`z^2` then follows a chi-square law with one degree of freedom, and
the event :math:`z^2 > \tau` has a known probability
:math:`p = P(\chi^2_1 > \tau)`.

For every latent pixel we count, in a square window around it, how many
entries exceed :math:`\tau` (averaged over channels). Under :math:`H_0`
this count is binomial, so its upper tail probability tells how surprising
the window is. The per-scale log-probabilities are upsampled to the image
size and summed over scales, and multiplying by the number of tests gives
the Number of False Alarms (NFA, Desolneux, Moisan & Morel). A pixel is
declared anomalous when its NFA is below ``epsilon`` (1 by default): on
normal images, fewer than ``epsilon`` false detections are expected per
image. This follows the segmentation procedure of U-Flow (Tailanian,
Pardo & Musé, arXiv:2211.12353).
"""

import functools
import math
from numbers import Integral, Real

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import binom, chi2

__all__ = ["log_nfa", "nfa_mask"]

# log10 of the smallest positive normal double. Replaces the -inf tail
# P(Binomial(n, p) > n) = 0 so that sums over scales stay finite.
_LOG10_PROBABILITY_FLOOR = float(np.log10(np.finfo(np.float64).tiny))


def log_nfa(latents, output_size, *, window_size=7, probability_threshold=0.5):
    """Compute the log10 Number of False Alarms of every pixel.

    Parameters
    ----------
    latents : list of torch.Tensor
        Flow latents, one tensor per scale, each of shape ``(n, C_s, h_s, w_s)``,
        scale 0 being the finest and each following scale about twice
        coarser. All tensors must share ``n`` and the device. Under normal
        data every entry is expected to be i.i.d. N(0, 1).
    output_size : int or tuple of int
        Size ``(H, W)`` of the returned maps (an int means ``(H, H)``).
    window_size : int, default=7
        Side of the counting window at the finest scale. At scale ``s`` the
        window has half-width ``r_s = max(int(window_size / 2**s) // 2, 1)``,
        i.e. side ``2 * r_s + 1``, so 7, 3, 3, ... with the default.
    probability_threshold : float, default=0.5
        An entry counts as "large" when
        ``z**2 > chi2.ppf(probability_threshold, df=1)``, which happens with
        probability ``p = 1 - probability_threshold`` under the null
        hypothesis.

    Returns
    -------
    torch.Tensor
        Float32 tensor of shape ``(n, H, W)`` on the latents' device holding
        ``log10(NFA)``. Lower values are more anomalous; negative values mean
        ``NFA < 1``.

    Notes
    -----
    For a pixel of scale ``s`` with window of ``n_trials = (2 r_s + 1)**2``
    positions, ``k`` is the number of window entries with ``z**2 > tau``,
    averaged over the channels. Its log-probability under the null
    hypothesis is ``log10 P(Binomial(n_trials, p) > floor(k))``, clamped
    below at about -307.65 (log10 of the smallest positive normal double)
    where ``k = n_trials`` and the tail is empty. Windows are padded by
    reflection (numpy's ``'reflect'`` mode, mirrored again if the window is
    wider than the map). The maps are upsampled bilinearly
    (``align_corners=False``) to ``(H, W)`` and summed over scales, and
    ``log10(sum_s h_s * w_s)``, the number of tests, is added.

    See Also
    --------
    nfa_mask : Threshold this map into an anomaly mask.
    """
    chi2_threshold = _validate_arguments(latents, window_size, probability_threshold)
    output_size = _validate_output_size(output_size)
    device = latents[0].device
    p_exceed = 1.0 - probability_threshold

    with torch.no_grad():
        n_images = latents[0].shape[0]
        total_log10_probability = torch.zeros(
            (n_images, 1, *output_size), dtype=torch.float32, device=device
        )
        n_tests = 0
        for scale, z in enumerate(latents):
            n_channels, height, width = z.shape[1:]
            n_tests += height * width
            half_width = _window_half_width(window_size, scale)
            n_trials = (2 * half_width + 1) ** 2

            exceed_counts = (z.detach().float() ** 2 > chi2_threshold).sum(
                dim=1, dtype=torch.int64
            )
            window_counts = _box_sum_reflect(exceed_counts, half_width)
            # Integer division gives floor(mean over channels) exactly,
            # avoiding 4.9999 -> 4 float rounding at integer averages.
            floor_k = torch.div(window_counts, n_channels, rounding_mode="floor")

            table = torch.tensor(
                _log10_binomial_tail_table(n_trials, p_exceed),
                dtype=torch.float32,
                device=device,
            )
            scale_log10_probability = table[floor_k].unsqueeze(1)
            total_log10_probability += F.interpolate(
                scale_log10_probability,
                size=output_size,
                mode="bilinear",
                align_corners=False,
            )

        return (total_log10_probability[:, 0] + math.log10(n_tests)).contiguous()


def nfa_mask(
    latents,
    output_size,
    *,
    window_size=7,
    probability_threshold=0.5,
    log_epsilon=0.0,
):
    """Segment anomalies as the pixels whose NFA is below ``10**log_epsilon``.

    Parameters
    ----------
    latents : list of torch.Tensor
        Flow latents, one tensor of shape ``(n, C_s, h_s, w_s)`` per scale,
        finest first. See :func:`log_nfa`.
    output_size : int or tuple of int
        Size ``(H, W)`` of the returned masks.
    window_size : int, default=7
        Side of the counting window at the finest scale, see :func:`log_nfa`.
    probability_threshold : float, default=0.5
        Chi-square quantile defining a "large" latent entry, see
        :func:`log_nfa`.
    log_epsilon : float, default=0.0
        log10 of the NFA threshold ``epsilon``. The default ``0`` means
        ``epsilon = 1``: on normal images, less than one false detection is
        expected per image.

    Returns
    -------
    torch.Tensor
        Boolean tensor of shape ``(n, H, W)`` on the latents' device, True
        where the pixel is anomalous (``log10(NFA) < log_epsilon``).
    """
    if isinstance(log_epsilon, bool) or not isinstance(log_epsilon, Real):
        raise ValueError(
            f"log_epsilon must be a real number, got {log_epsilon!r}."
        )
    if not math.isfinite(log_epsilon):
        raise ValueError(f"log_epsilon must be finite, got {log_epsilon!r}.")
    log_nfa_map = log_nfa(
        latents,
        output_size,
        window_size=window_size,
        probability_threshold=probability_threshold,
    )
    return log_nfa_map < log_epsilon


def _window_half_width(window_size, scale):
    """Half-width ``r_s`` of the counting window at ``scale``."""
    return max(int(window_size / 2**scale) // 2, 1)


@functools.lru_cache(maxsize=64)
def _log10_binomial_tail_table(n_trials, p_exceed):
    """``log10 P(Binomial(n_trials, p_exceed) > k)`` for ``k = 0..n_trials``.

    Returns
    -------
    tuple of float
        ``n_trials + 1`` values, clamped below at ``_LOG10_PROBABILITY_FLOOR``
        (a tuple so the cached result cannot be modified).
    """
    k = np.arange(n_trials + 1, dtype=np.float64)
    log10_tail = binom.logsf(k, n_trials, p_exceed) / np.log(10.0)
    return tuple(np.maximum(log10_tail, _LOG10_PROBABILITY_FLOOR).tolist())


def _reflect_indices(indices, size):
    """Map integer positions into ``[0, size)`` by repeated mirror reflection.

    Matches numpy's ``np.pad(..., mode='reflect')`` (edge not repeated),
    including pads wider than ``size``.
    """
    if size == 1:
        return torch.zeros_like(indices)
    period = 2 * (size - 1)
    folded = torch.remainder(indices, period)
    return torch.where(folded >= size, period - folded, folded)


def _box_sum_reflect(values, half_width):
    """Sum ``values`` over square windows with reflection padding.

    Parameters
    ----------
    values : torch.Tensor
        Integer tensor of shape ``(n, h, w)``.
    half_width : int
        Window half-width ``r``; the window side is ``2 r + 1``.

    Returns
    -------
    torch.Tensor
        Tensor of shape ``(n, h, w)``, exact window sums.
    """
    _, height, width = values.shape
    device = values.device
    row_index = _reflect_indices(
        torch.arange(-half_width, height + half_width, device=device), height
    )
    col_index = _reflect_indices(
        torch.arange(-half_width, width + half_width, device=device), width
    )
    padded = values[:, row_index][:, :, col_index]
    # Integer cumulative sums keep the counts exact, unlike a float box filter.
    cumulative = F.pad(padded.cumsum(dim=1).cumsum(dim=2), (1, 0, 1, 0))
    side = 2 * half_width + 1
    return (
        cumulative[:, side:, side:]
        - cumulative[:, :-side, side:]
        - cumulative[:, side:, :-side]
        + cumulative[:, :-side, :-side]
    )


def _validate_arguments(latents, window_size, probability_threshold):
    """Check the shared arguments and return the chi-square threshold ``tau``."""
    if isinstance(window_size, bool) or not isinstance(window_size, Integral):
        raise ValueError(
            f"window_size must be an integer >= 1, got {window_size!r}."
        )
    if window_size < 1:
        raise ValueError(f"window_size must be an integer >= 1, got {window_size}.")
    if (
        isinstance(probability_threshold, bool)
        or not isinstance(probability_threshold, Real)
        or not 0.0 < probability_threshold < 1.0
    ):
        raise ValueError(
            "probability_threshold must be a number strictly between 0 and 1, "
            f"got {probability_threshold!r}."
        )
    if not isinstance(latents, (list, tuple)) or len(latents) == 0:
        raise ValueError(
            "latents must be a non-empty list of tensors of shape "
            f"(n, C, h, w), one per scale; got {type(latents).__name__}"
            + (" of length 0." if isinstance(latents, (list, tuple)) else ".")
        )
    for scale, z in enumerate(latents):
        if not isinstance(z, torch.Tensor):
            raise ValueError(
                f"latents[{scale}] must be a torch.Tensor, got {type(z).__name__}."
            )
        if z.ndim != 4:
            raise ValueError(
                f"latents[{scale}] must be 4-d (n, C, h, w), got shape "
                f"{tuple(z.shape)}."
            )
        if not z.is_floating_point():
            raise ValueError(
                f"latents[{scale}] must have a floating dtype, got {z.dtype}."
            )
        if min(z.shape[1:]) == 0:
            raise ValueError(
                f"latents[{scale}] has an empty channel or spatial dimension: "
                f"shape {tuple(z.shape)}."
            )
    n_images = {z.shape[0] for z in latents}
    if len(n_images) != 1:
        raise ValueError(
            "All latents must have the same number of images n; got shapes "
            f"{[tuple(z.shape) for z in latents]}."
        )
    devices = {z.device for z in latents}
    if len(devices) != 1:
        raise ValueError(
            f"All latents must be on the same device, got {sorted(map(str, devices))}."
        )
    return float(chi2.ppf(probability_threshold, df=1))


def _validate_output_size(output_size):
    """Return ``output_size`` as a ``(H, W)`` tuple of positive ints."""
    if isinstance(output_size, Integral) and not isinstance(output_size, bool):
        output_size = (output_size, output_size)
    try:
        height, width = output_size
    except (TypeError, ValueError):
        raise ValueError(
            f"output_size must be an int or a pair (H, W), got {output_size!r}."
        ) from None
    for side in (height, width):
        if isinstance(side, bool) or not isinstance(side, Integral) or side < 1:
            raise ValueError(
                "output_size must contain positive integers, got "
                f"{output_size!r}."
            )
    return int(height), int(width)


def _bilinear_resize_reference(image, output_size):
    """Resize a 2-d array like ``F.interpolate(mode='bilinear', align_corners=False)``.

    Parameters
    ----------
    image : numpy.ndarray
        Array of shape ``(h, w)``.
    output_size : tuple of int
        ``(H, W)``.

    Returns
    -------
    numpy.ndarray
        Float64 array of shape ``(H, W)``.
    """

    def source_positions(in_size, out_size):
        position = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
        position = np.maximum(position, 0.0)
        lower = np.minimum(np.floor(position).astype(int), in_size - 1)
        upper = np.minimum(lower + 1, in_size - 1)
        return lower, upper, position - lower

    row_lower, row_upper, row_weight = source_positions(image.shape[0], output_size[0])
    col_lower, col_upper, col_weight = source_positions(image.shape[1], output_size[1])
    rows = (
        image[row_lower] * (1.0 - row_weight[:, None])
        + image[row_upper] * row_weight[:, None]
    )
    return rows[:, col_lower] * (1.0 - col_weight) + rows[:, col_upper] * col_weight


def _log_nfa_reference(latents, output_size, *, window_size=7, probability_threshold=0.5):
    """Straightforward loop implementation of :func:`log_nfa`.

    Same arguments and result (as float64 numpy array of shape ``(n, H, W)``)
    as :func:`log_nfa`, computed pixel by pixel with
    ``scipy.stats.binom.logsf``. Slow; kept as a correctness reference and a
    speed baseline.
    """
    chi2_threshold = _validate_arguments(latents, window_size, probability_threshold)
    output_size = _validate_output_size(output_size)
    p_exceed = 1.0 - probability_threshold
    latents_np = [z.detach().cpu().double().numpy() for z in latents]
    n_images = latents_np[0].shape[0]
    n_tests = sum(z.shape[2] * z.shape[3] for z in latents_np)

    def reflect(position, size):
        if size == 1:
            return 0
        period = 2 * (size - 1)
        position %= period
        return period - position if position >= size else position

    result = np.zeros((n_images, *output_size))
    for scale, z in enumerate(latents_np):
        _, n_channels, height, width = z.shape
        half_width = _window_half_width(window_size, scale)
        n_trials = (2 * half_width + 1) ** 2
        for image_index in range(n_images):
            exceeds = z[image_index] ** 2 > chi2_threshold
            log10_probability = np.zeros((height, width))
            for row in range(height):
                for col in range(width):
                    count = 0
                    for d_row in range(-half_width, half_width + 1):
                        for d_col in range(-half_width, half_width + 1):
                            count += exceeds[
                                :,
                                reflect(row + d_row, height),
                                reflect(col + d_col, width),
                            ].sum()
                    k = count / n_channels
                    log10_probability[row, col] = max(
                        binom.logsf(k, n_trials, p_exceed) / np.log(10.0),
                        _LOG10_PROBABILITY_FLOOR,
                    )
            result[image_index] += _bilinear_resize_reference(
                log10_probability, output_size
            )
    return result + np.log10(n_tests)


# --- TEMPORARY: statistics-based entry points; replaced by the nfa branch. ---
def chi2_threshold(probability_threshold):
    return float(chi2.ppf(probability_threshold, df=1))


def block_log_nfa(exceedance_counts, n_channels, output_size, *, window_size=5, probability_threshold=0.9,
                  high_precision=False):
    output_size = _validate_output_size(output_size)
    p_exceed = 1.0 - probability_threshold
    counts = [torch.as_tensor(np.asarray(c), dtype=torch.int64) for c in exceedance_counts]
    total = torch.zeros((counts[0].shape[0], 1, *output_size), dtype=torch.float32)
    n_tests = 0
    for scale, (c, channels) in enumerate(zip(counts, n_channels)):
        n_tests += c.shape[1] * c.shape[2]
        half_width = _window_half_width(window_size, scale)
        n_trials = (2 * half_width + 1) ** 2
        floor_k = torch.div(_box_sum_reflect(c, half_width), channels, rounding_mode="floor")
        table = torch.tensor(_log10_binomial_tail_table(n_trials, p_exceed), dtype=torch.float32)
        total += F.interpolate(table[floor_k].unsqueeze(1), size=output_size, mode="bilinear", align_corners=False)
    return (total[:, 0] + math.log10(n_tests)).numpy()


def tree_log_nfa(energies, n_channels, output_size):
    output_size = _validate_output_size(output_size)
    total = None
    n_tests = sum(e.shape[1] * e.shape[2] for e in energies)
    for e, channels in zip(energies, n_channels):
        log_p = chi2.logsf(np.asarray(e, dtype=np.float64), df=channels) / np.log(10.0)
        up = F.interpolate(torch.as_tensor(log_p, dtype=torch.float32)[:, None], size=output_size, mode="bilinear",
                           align_corners=False)[:, 0]
        total = up if total is None else torch.minimum(total, up)
    return (total + math.log10(n_tests)).numpy()
