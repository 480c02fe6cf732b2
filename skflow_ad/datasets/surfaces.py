"""Generated surfaces: textured industrial parts with planted defects and exact masks.

:func:`make_surface_defects` and :func:`make_surface_train_test` render
brushed metal, cast grain or woven fabric under varying lighting, and plant
scratches, cracks, spots and contamination whose pixel masks are known
exactly. The data is generated, so it carries no licence restrictions.

Conventions: images are ``uint8`` arrays, gray ``(n, H, W)`` or colour
channels-last ``(n, H, W, 3)``; labels are ``+1`` for normal and ``-1`` for
anomalous images; masks are boolean ``(n, H, W)`` arrays, ``True`` on
anomalous pixels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.special import expit
from sklearn.utils import Bunch, check_random_state

from ._parameters import check_bool, check_count, check_image_size, is_integer

__all__ = [
    "DEFECT_AREA_RANGE",
    "DEFECT_TYPES",
    "SURFACE_TEXTURES",
    "make_surface_defects",
    "make_surface_train_test",
]

SURFACE_TEXTURES = ("brushed", "grain", "weave")
DEFECT_TYPES = ("scratch", "crack", "spot", "contamination")

# Share of an anomalous image's pixels covered by its defect mask; defects are
# re-drawn until the mask falls in this range, so the guarantee is exact.
DEFECT_AREA_RANGE = (0.005, 0.05)

# A pixel belongs to a defect mask when the defect moved it by at least this
# much (8 gray levels, four times the sensor noise), or when it lies inside the
# outline of a contamination, whose inside may by chance resemble the surface.
_VISIBLE_CHANGE = 8.0 / 255.0
_SENSOR_NOISE = 2.0 / 255.0
_MIN_SYNTHETIC_SIZE = 32
_MAX_DEFECT_ATTEMPTS = 200
_PIXELS_PER_BATCH = 2**21

# Material colours multiply the gray rendering in colour mode.
_MATERIAL_TINTS = {
    "brushed": (0.95, 0.99, 1.06),  # bluish steel
    "grain": (1.10, 0.98, 0.82),  # cast brass
    "weave": (1.08, 0.99, 0.86),  # beige fabric
}
_TEXTURE_CONTRAST = {"brushed": 0.055, "grain": 0.05, "weave": 0.065}
_OIL_TINT = np.array([1.16, 0.93, 0.68])  # dark contamination: oil, rust
_DUST_TINT = np.array([1.02, 1.00, 0.94])  # bright contamination: dust, residue


# ---------------------------------------------------------------------------
# Synthetic surfaces: textures
# ---------------------------------------------------------------------------


class _Canvas:
    """Pixel grid of one image size, shared by the texture and defect painters."""

    def __init__(self, height, width):
        self.height = height
        self.width = width
        self.shape = (height, width)
        # Geometry is expressed relative to the image, so that a larger
        # image_size renders the same scene at a finer resolution.
        self.length = float(np.sqrt(height * width))
        self.scale = self.length / 64.0
        rows, cols = np.mgrid[0:height, 0:width]
        self.rows = rows.astype(np.float64)
        self.cols = cols.astype(np.float64)

    def window(self, center, half_size):
        """Slices of the square around ``center`` (row, col), clipped to the image; None if empty."""
        row_lo = max(int(np.floor(center[0] - half_size)), 0)
        row_hi = min(int(np.ceil(center[0] + half_size)) + 1, self.height)
        col_lo = max(int(np.floor(center[1] - half_size)), 0)
        col_hi = min(int(np.ceil(center[1] + half_size)) + 1, self.width)
        if row_lo >= row_hi or col_lo >= col_hi:
            return None
        return slice(row_lo, row_hi), slice(col_lo, col_hi)

    def random_point(self, rng, margin):
        """A ``(row, col)`` point at least ``margin`` (a fraction) away from the borders."""
        return np.array(
            [
                rng.uniform(margin, 1.0 - margin) * (self.height - 1),
                rng.uniform(margin, 1.0 - margin) * (self.width - 1),
            ]
        )


def _frequencies(shape):
    """Row and column frequencies (cycles per pixel) of ``rfft2`` on ``shape``, and their squared norm."""
    freq_rows = np.fft.fftfreq(shape[0])[:, None]
    freq_cols = np.fft.rfftfreq(shape[1])[None, :]
    return freq_rows, freq_cols, freq_rows**2 + freq_cols**2


def _gaussian_response(squared_frequency, sigma):
    """Frequency response of a Gaussian blur of standard deviation ``sigma`` pixels."""
    return np.exp(-2.0 * np.pi**2 * sigma**2 * squared_frequency)


def _unit_power(response):
    """Scale a frequency response so that it passes white noise at unit variance."""
    return response / np.sqrt(np.mean(response**2, axis=(-2, -1), keepdims=True))


def _filtered_noise(shape, response, rng):
    """Gaussian noise of ``shape`` (..., H, W) shaped by ``response``, standardised per image."""
    noise = rng.standard_normal(shape)
    field = np.fft.irfft2(np.fft.rfft2(noise) * response, s=shape[-2:])
    field -= field.mean(axis=(-2, -1), keepdims=True)
    field /= field.std(axis=(-2, -1), keepdims=True) + 1e-12
    return field


def _render_textures(texture, n_images, canvas, rng):
    """Zero-mean, unit-variance surface textures, shape ``(n_images, H, W)``."""
    shape = (n_images, *canvas.shape)
    freq_rows, freq_cols, squared = _frequencies(canvas.shape)
    scale, length = canvas.scale, canvas.length
    # Slow variations of gloss or finish, common to all materials.
    blotches = _unit_power(_gaussian_response(squared, 0.12 * length))

    if texture == "brushed":
        # Long thin streaks along the brushing direction, which wobbles by a
        # degree or two from part to part, over a fine isotropic grain.
        angle = rng.normal(0.0, np.deg2rad(1.5), size=(n_images, 1, 1))
        along = freq_cols * np.cos(angle) + freq_rows * np.sin(angle)
        across = -freq_cols * np.sin(angle) + freq_rows * np.cos(angle)
        streaks = np.exp(-2.0 * np.pi**2 * ((0.2 * length * along) ** 2 + (0.45 * scale * across) ** 2))
        fine_grain = _unit_power(_gaussian_response(squared, 0.5 * scale))
        response = _unit_power(streaks) + 0.35 * fine_grain + 0.35 * blotches
        return _filtered_noise(shape, response, rng)

    if texture == "grain":
        # Band-pass noise: the granular look of cast or sand-blasted metal.
        grains = _gaussian_response(squared, 0.6 * scale) - _gaussian_response(squared, 2.2 * scale)
        response = _unit_power(grains) + 0.45 * blotches
        return _filtered_noise(shape, response, rng)

    # "weave": a periodic over-under thread pattern whose phase (the position
    # of the part), orientation and thread paths vary from image to image.
    period = 5.0 * scale
    angle = rng.normal(0.0, np.deg2rad(1.5), size=(n_images, 1, 1))
    phases = rng.uniform(0.0, 2.0 * np.pi, size=(n_images, 2, 1, 1))
    wander_response = _gaussian_response(squared, 0.08 * length)
    wander = 0.6 * _filtered_noise((n_images, 2, *canvas.shape), wander_response, rng)
    along = canvas.cols * np.cos(angle) + canvas.rows * np.sin(angle)
    across = -canvas.cols * np.sin(angle) + canvas.rows * np.cos(angle)
    warp_phase = 2.0 * np.pi * along / period + phases[:, 0] + wander[:, 0]
    weft_phase = 2.0 * np.pi * across / period + phases[:, 1] + wander[:, 1]
    # Each thread is bright at its crown; which family lies on top alternates
    # from crossing to crossing.
    warp_on_top = np.sin(warp_phase / 2.0) * np.sin(weft_phase / 2.0) > 0
    warp_threads = np.cos(weft_phase) ** 2
    weft_threads = np.cos(warp_phase) ** 2
    pattern = np.where(warp_on_top, warp_threads, weft_threads)
    pattern -= pattern.mean(axis=(1, 2), keepdims=True)
    pattern /= pattern.std(axis=(1, 2), keepdims=True) + 1e-12
    fibres = _unit_power(_gaussian_response(squared, 0.5 * scale)) + 0.5 * blotches
    texture_field = pattern + 0.45 * _filtered_noise(shape, fibres, rng)
    return texture_field / texture_field.std(axis=(1, 2), keepdims=True)


def _illumination(n_images, canvas, rng):
    """Multiplicative lighting fields ``(n_images, H, W)``: a tilted plane and mild vignetting."""
    rows = canvas.rows / max(canvas.height - 1, 1) - 0.5
    cols = canvas.cols / max(canvas.width - 1, 1) - 0.5
    direction = rng.uniform(0.0, 2.0 * np.pi, size=(n_images, 1, 1))
    slope = rng.uniform(0.03, 0.12, size=(n_images, 1, 1))
    vignetting = rng.uniform(0.0, 0.25, size=(n_images, 1, 1))
    center = rng.uniform(-0.15, 0.15, size=(n_images, 2, 1, 1))
    plane = slope * (cols * np.cos(direction) + rows * np.sin(direction))
    falloff = vignetting * ((rows - center[:, 0]) ** 2 + (cols - center[:, 1]) ** 2)
    return 1.0 + plane - falloff


def _render_surfaces(texture, n_images, canvas, color, rng):
    """Defect-free surfaces: the ingredients that :func:`_expose` turns into images.

    Returns reflectance and illumination ``(n_images, H, W)``, colour tints
    ``(n_images, H, W, 3)`` (a list of None when gray) and sensor noise shaped
    like the images.
    """
    textures = _render_textures(texture, n_images, canvas, rng)
    # Part-to-part variation in overall brightness and texture contrast.
    brightness = rng.uniform(0.46, 0.54, size=(n_images, 1, 1))
    contrast = _TEXTURE_CONTRAST[texture] * rng.uniform(0.85, 1.15, size=(n_images, 1, 1))
    reflectance = brightness + contrast * textures
    illumination = _illumination(n_images, canvas, rng)
    if color:
        tint = np.asarray(_MATERIAL_TINTS[texture]) * (1.0 + rng.normal(0.0, 0.015, size=(n_images, 3)))
        tints = np.broadcast_to(tint[:, None, None, :], (n_images, *canvas.shape, 3))
        sensor_noise = rng.normal(0.0, _SENSOR_NOISE, size=(n_images, *canvas.shape, 3))
    else:
        tints = [None] * n_images
        sensor_noise = rng.normal(0.0, _SENSOR_NOISE, size=(n_images, *canvas.shape))
    return reflectance, illumination, tints, sensor_noise


# ---------------------------------------------------------------------------
# Synthetic surfaces: defects
# ---------------------------------------------------------------------------


def _polyline_coverage(canvas, points, widths, strengths):
    """Anti-aliased ink of a polyline, shape ``(H, W)`` with values in [0, 1].

    ``points`` is ``(m, 2)`` in (row, col) pixels; ``widths`` and ``strengths``
    hold one value per segment, ``(m - 1,)``.
    """
    coverage = np.zeros(canvas.shape)
    for start, end, width, strength in zip(points[:-1], points[1:], widths, strengths):
        margin = width / 2.0 + 2.0
        row_lo = max(int(np.floor(min(start[0], end[0]) - margin)), 0)
        row_hi = min(int(np.ceil(max(start[0], end[0]) + margin)) + 1, canvas.height)
        col_lo = max(int(np.floor(min(start[1], end[1]) - margin)), 0)
        col_hi = min(int(np.ceil(max(start[1], end[1]) + margin)) + 1, canvas.width)
        if row_lo >= row_hi or col_lo >= col_hi:
            continue
        rows = canvas.rows[row_lo:row_hi, col_lo:col_hi] - start[0]
        cols = canvas.cols[row_lo:row_hi, col_lo:col_hi] - start[1]
        segment = end - start
        squared_length = float(segment @ segment)
        if squared_length > 0:
            along = np.clip((rows * segment[0] + cols * segment[1]) / squared_length, 0.0, 1.0)
        else:
            along = np.zeros_like(rows)
        distance = np.hypot(rows - along * segment[0], cols - along * segment[1])
        # Box-filter anti-aliasing: full ink within the half width, a one-pixel
        # ramp outside it; lines thinner than a pixel never reach full ink.
        ink = np.clip(width / 2.0 + 0.5 - distance, 0.0, min(width, 1.0)) * strength
        window = coverage[row_lo:row_hi, col_lo:col_hi]
        np.maximum(window, ink, out=window)
    return coverage


def _bright_or_dark(rng, p_bright):
    return 1.0 if rng.uniform() < p_bright else -1.0


def _paint_scratch(canvas, reflectance, tint, rng):
    """A thin, gently curved line, brighter (catching the light) or darker."""
    length = rng.uniform(0.25, 0.6) * canvas.length
    angle = rng.uniform(0.0, np.pi)
    direction = np.array([np.sin(angle), np.cos(angle)])
    normal = np.array([direction[1], -direction[0]])
    center = canvas.random_point(rng, margin=0.2)
    start = center - direction * length / 2.0
    end = center + direction * length / 2.0
    control = center + normal * rng.normal(0.0, 0.2) * length
    t = np.linspace(0.0, 1.0, 17)[:, None]
    points = (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end
    width = max(rng.uniform(0.6, 1.3) * canvas.scale, 0.7)
    middle = (t[:-1, 0] + t[1:, 0]) / 2.0
    # Scratches fade out at their ends, where the tool lifted off.
    fading = 0.35 + 0.65 * np.sin(np.pi * middle) ** 0.5
    coverage = _polyline_coverage(canvas, points, np.full(len(middle), width), fading)
    amplitude = _bright_or_dark(rng, p_bright=0.65) * rng.uniform(0.14, 0.24)
    return reflectance + amplitude * coverage, tint, None


def _crack_path(start, heading, n_steps, step, rng):
    """A jagged path that keeps a general direction: slow drift plus per-step jitter."""
    drift = np.cumsum(rng.normal(0.0, 0.12, n_steps))
    headings = heading + drift + rng.normal(0.0, 0.4, n_steps)
    steps = step * np.stack([np.sin(headings), np.cos(headings)], axis=1)
    return np.vstack([start, start + np.cumsum(steps, axis=0)])


def _tapered_widths(n_segments, max_width):
    middle = (np.arange(n_segments) + 0.5) / n_segments
    return max_width * (0.25 + 0.75 * np.sin(np.pi * middle))


def _paint_crack(canvas, reflectance, tint, rng):
    """A dark, jagged, tapering random-walk polyline, sometimes with a side branch."""
    step = 1.5 * canvas.scale
    n_steps = max(int(rng.uniform(0.3, 0.55) * canvas.length / step), 4)
    start, heading = canvas.random_point(rng, margin=0.2), rng.uniform(0.0, 2.0 * np.pi)
    path = _crack_path(start, heading, n_steps, step, rng)
    max_width = max(rng.uniform(1.0, 1.8) * canvas.scale, 1.0)
    widths = _tapered_widths(n_steps, max_width)
    coverage = _polyline_coverage(canvas, path, widths, np.ones(n_steps))
    if rng.uniform() < 0.5:
        fork = rng.randint(n_steps // 4, max(3 * n_steps // 4, n_steps // 4 + 1))
        main_heading = np.arctan2(*(path[fork + 1] - path[fork]))
        branch_heading = main_heading + _bright_or_dark(rng, 0.5) * rng.uniform(0.4, 1.0)
        n_branch = max(int(n_steps * rng.uniform(0.3, 0.5)), 2)
        branch = _crack_path(path[fork], branch_heading, n_branch, step, rng)
        # The branch starts as wide as the crack at the fork and thins out.
        branch_widths = widths[fork] * np.linspace(1.0, 0.3, n_branch)
        coverage = np.maximum(coverage, _polyline_coverage(canvas, branch, branch_widths, np.ones(n_branch)))
    darkening = rng.uniform(0.22, 0.38)
    return reflectance - darkening * coverage, tint, None


def _paint_spots(canvas, reflectance, tint, rng):
    """One to three small pits (dark, with a lit rim) or specks (bright), in a cluster."""
    n_spots = rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2])
    cluster_center = canvas.random_point(rng, margin=0.15)
    is_pit = rng.uniform() < 0.6
    light_direction = rng.uniform(0.0, 2.0 * np.pi)
    change = np.zeros(canvas.shape)
    for index in range(n_spots):
        center = cluster_center if index == 0 else cluster_center + rng.normal(0.0, 0.06 * canvas.length, 2)
        radius = max(rng.uniform(0.025, 0.05) * canvas.length, 1.2)
        aspect = rng.uniform(0.6, 1.0)
        angle = rng.uniform(0.0, np.pi)
        strength = rng.uniform(0.18, 0.32)
        window = canvas.window(center, radius + 3.0 * canvas.scale + 3.0)
        if window is None:
            continue
        d_rows, d_cols = canvas.rows[window] - center[0], canvas.cols[window] - center[1]
        major = d_rows * np.cos(angle) + d_cols * np.sin(angle)
        minor = (-d_rows * np.sin(angle) + d_cols * np.cos(angle)) / aspect
        distance = np.hypot(major, minor)
        disc = np.clip(radius + 0.5 - distance, 0.0, 1.0)
        if is_pit:
            # A crater: deepest in the middle, its far wall catching the light.
            depth = disc * (0.7 + 0.3 * np.clip(1.0 - distance / radius, 0.0, 1.0))
            rim = np.exp(-(((distance - radius - 0.5) / max(0.8 * canvas.scale, 0.6)) ** 2))
            lit_side = np.clip(np.cos(np.arctan2(d_rows, d_cols) - light_direction), 0.0, None)
            spot = -strength * depth + 0.5 * strength * rim * lit_side
        else:
            spot = strength * ndimage.gaussian_filter(disc, 0.4 * canvas.scale)
        local = change[window]
        change[window] = np.where(np.abs(spot) > np.abs(local), spot, local)
    return reflectance + change, tint, None


def _paint_contamination(canvas, reflectance, tint, rng):
    """An irregular, soft-edged smudge of oil or dust that hides the surface texture."""
    radius = rng.uniform(0.07, 0.13) * canvas.length
    aspect = rng.uniform(0.6, 1.0)
    angle = rng.uniform(0.0, np.pi)
    center = canvas.random_point(rng, margin=0.2)
    harmonics = np.arange(2, 7)
    wobble = rng.uniform(0.0, 0.25, size=len(harmonics)) / np.sqrt(harmonics)
    wobble_phase = rng.uniform(0.0, 2.0 * np.pi, size=len(harmonics))
    edge_width = max(canvas.scale, 0.7)
    opacity = rng.uniform(0.65, 0.9)
    is_oil = rng.uniform() < 0.7
    shift = -rng.uniform(0.08, 0.16) if is_oil else rng.uniform(0.07, 0.13)

    window = canvas.window(center, radius * (1.0 + wobble.sum()) + 6.0 * edge_width + 2.0)
    d_rows, d_cols = canvas.rows[window] - center[0], canvas.cols[window] - center[1]
    major = d_rows * np.cos(angle) + d_cols * np.sin(angle)
    minor = (-d_rows * np.sin(angle) + d_cols * np.cos(angle)) / aspect
    distance = np.hypot(major, minor)
    polar_angle = np.arctan2(minor, major)
    outline = radius * (1.0 + np.cos(harmonics * polar_angle[..., None] + wobble_phase) @ wobble)
    inside = expit((outline - distance) / edge_width)
    # The smudge is thicker in places, and has a blotchy texture of its own.
    thickness = ndimage.gaussian_filter(rng.standard_normal(distance.shape), 2.0 * canvas.scale)
    thickness = np.clip(1.0 + 0.15 * thickness / (thickness.std() + 1e-12), 0.7, 1.15)
    alpha = inside * opacity * thickness
    mottle = ndimage.gaussian_filter(rng.standard_normal(distance.shape), canvas.scale)
    mottle *= 0.035 / (mottle.std() + 1e-12)
    local = reflectance[window]
    residue = ndimage.gaussian_filter(local, 1.2 * canvas.scale) + shift + mottle

    stained = reflectance.copy()
    stained[window] = local + alpha * (residue - local)
    footprint = np.zeros(canvas.shape, dtype=bool)
    footprint[window] = inside >= 0.5
    if tint is not None:
        stain_tint = _OIL_TINT if is_oil else _DUST_TINT
        tint = np.array(tint)
        tint[window] += alpha[..., None] * (stain_tint - tint[window])
    return stained, tint, footprint


_DEFECT_PAINTERS = {
    "scratch": _paint_scratch,
    "crack": _paint_crack,
    "spot": _paint_spots,
    "contamination": _paint_contamination,
}


def _expose(reflectance, illumination, tint, sensor_noise):
    """Camera image in [0, 1]: lit reflectance, coloured when ``tint`` is given, plus noise."""
    lit = reflectance * illumination
    if tint is not None:
        lit = lit[..., None] * tint
    return np.clip(lit + sensor_noise, 0.0, 1.0)


def _to_uint8(image):
    return np.rint(image * 255.0).astype(np.uint8)


def _plant_defects(
    canvas, clean, reflectance, illumination, tint, sensor_noise, defect_types, max_defects, rng
):
    """Draw defects on one surface until their mask covers the documented area range.

    ``clean`` is the defect-free image that :func:`_expose` made of the other
    ingredients. Returns the defective image (float, laid out like ``clean``),
    its mask ``(H, W)`` and the defect-type label.
    """
    n_pixels = reflectance.size
    for _ in range(_MAX_DEFECT_ATTEMPTS):
        n_defects = rng.randint(1, max_defects + 1)
        kinds = [defect_types[rng.randint(len(defect_types))] for _ in range(n_defects)]
        defective_reflectance, defective_tint = reflectance, tint
        outline = np.zeros(canvas.shape, dtype=bool)
        for kind in kinds:
            defective_reflectance, defective_tint, footprint = _DEFECT_PAINTERS[kind](
                canvas, defective_reflectance, defective_tint, rng
            )
            if footprint is not None:
                outline |= footprint
        defective = _expose(defective_reflectance, illumination, defective_tint, sensor_noise)
        change = np.abs(defective - clean)
        if change.ndim == 3:
            change = change.max(axis=-1)
        mask = (change >= _VISIBLE_CHANGE) | outline
        fraction = mask.sum() / n_pixels
        if DEFECT_AREA_RANGE[0] <= fraction <= DEFECT_AREA_RANGE[1]:
            label = kinds[0] if len(set(kinds)) == 1 else "combined"
            return defective, mask, label
    raise RuntimeError(
        f"could not draw defects covering {DEFECT_AREA_RANGE[0]:.1%}-{DEFECT_AREA_RANGE[1]:.1%} of a "
        f"{canvas.height} x {canvas.width} image in {_MAX_DEFECT_ATTEMPTS} attempts; use a larger image_size."
    )


def _check_defect_types(defect_types):
    if isinstance(defect_types, str):
        defect_types = (defect_types,)
    try:
        defect_types = tuple(defect_types)
    except TypeError:
        raise TypeError(
            f"defect_types must be a sequence of strings from {DEFECT_TYPES}, got {defect_types!r}."
        ) from None
    unknown = [kind for kind in defect_types if kind not in DEFECT_TYPES]
    if unknown:
        raise ValueError(f"unknown defect type(s) {unknown}; choose from {DEFECT_TYPES}.")
    if not defect_types:
        raise ValueError(f"defect_types is empty; choose at least one of {DEFECT_TYPES}.")
    return tuple(dict.fromkeys(defect_types))


def _generate_surfaces(
    n_normal, n_anomalous, *, image_size, color, texture, defect_types, max_defects_per_image, random_state
):
    """Validate the parameters and render a normal-first batch of surfaces.

    Returns a :class:`~sklearn.utils.Bunch` with ``X`` and ``X_clean`` (the same
    surfaces without defects) as uint8 images, ``y``, ``masks`` and
    ``defect_types`` (``"good"``, a defect type, or ``"combined"``).
    """
    n_normal = check_count(n_normal, "n_normal")
    n_anomalous = check_count(n_anomalous, "n_anomalous")
    if n_normal + n_anomalous == 0:
        raise ValueError("n_normal + n_anomalous must be at least 1.")
    height, width = check_image_size(image_size, allow_none=False, minimum=_MIN_SYNTHETIC_SIZE)
    color = check_bool(color, "color")
    if texture not in SURFACE_TEXTURES:
        raise ValueError(f"unknown texture {texture!r}; choose from {SURFACE_TEXTURES}.")
    defect_types = _check_defect_types(defect_types)
    if not is_integer(max_defects_per_image) or max_defects_per_image < 1:
        raise ValueError(f"max_defects_per_image must be an int >= 1, got {max_defects_per_image!r}.")
    rng = check_random_state(random_state)

    n_images = n_normal + n_anomalous
    canvas = _Canvas(height, width)
    image_shape = (height, width, 3) if color else (height, width)
    X_clean = np.empty((n_images, *image_shape), dtype=np.uint8)
    X = np.empty_like(X_clean)
    masks = np.zeros((n_images, height, width), dtype=bool)
    labels = ["good"] * n_images
    # Batches bound the float64 working memory to about 100 MB at any image size.
    batch_size = max(1, _PIXELS_PER_BATCH // (height * width))
    for batch_start in range(0, n_images, batch_size):
        batch_stop = min(batch_start + batch_size, n_images)
        reflectance, illumination, tints, sensor_noise = _render_surfaces(
            texture, batch_stop - batch_start, canvas, color, rng
        )
        for offset, index in enumerate(range(batch_start, batch_stop)):
            clean = _expose(reflectance[offset], illumination[offset], tints[offset], sensor_noise[offset])
            X_clean[index] = X[index] = _to_uint8(clean)
            if index >= n_normal:
                defective, masks[index], labels[index] = _plant_defects(
                    canvas,
                    clean,
                    reflectance[offset],
                    illumination[offset],
                    tints[offset],
                    sensor_noise[offset],
                    defect_types,
                    max_defects_per_image,
                    rng,
                )
                X[index] = _to_uint8(defective)
    y = np.where(np.arange(n_images) < n_normal, 1, -1)
    return Bunch(
        X=X, X_clean=X_clean, y=y, masks=masks, defect_types=np.asarray(labels, dtype=object), rng=rng
    )


def make_surface_defects(
    n_normal=100,
    n_anomalous=20,
    *,
    image_size=64,
    color=False,
    texture="brushed",
    defect_types=DEFECT_TYPES,
    max_defects_per_image=1,
    shuffle=False,
    random_state=None,
):
    """Generate textured industrial surfaces, some with planted defects.

    Every image shows the same kind of surface (``texture``) under slightly
    different conditions: its own random texture, overall brightness and
    contrast, a tilted illumination gradient with mild vignetting, a small
    wobble of the texture's orientation (and, for ``"weave"``, a random shift of
    the pattern) and sensor noise. Anomalous images additionally carry one to
    ``max_defects_per_image`` local defects, drawn uniformly from
    ``defect_types``:

    - ``"scratch"``: a thin anti-aliased, gently curved line, brighter or darker
      than the surface, fading at its ends;
    - ``"crack"``: a dark, jagged random-walk polyline that tapers at both ends,
      sometimes with a side branch;
    - ``"spot"``: a cluster of one to three small pits (dark, with a lit rim) or
      bright specks;
    - ``"contamination"``: an irregular, soft-edged smudge of oil (darker,
      brownish in colour) or dust (lighter) that blurs away the texture.

    The defects of each image cover between 0.5% and 5% of its pixels
    (``DEFECT_AREA_RANGE``); they are re-drawn until they do.

    The data is generated, so it carries no licence restrictions.

    Parameters
    ----------
    n_normal : int, default=100
        Number of defect-free images.
    n_anomalous : int, default=20
        Number of images with defects.
    image_size : int or (int, int), default=64
        Image size, square or ``(height, width)``, at least 32 pixels per side.
        Sizes change the resolution, not the scene: defects and texture scale
        with the image.
    color : bool, default=False
        False gives gray images ``(n, H, W)``; True gives RGB images
        ``(n, H, W, 3)`` tinted like the material, with contamination also
        changing the colour.
    texture : {"brushed", "grain", "weave"}, default="brushed"
        ``"brushed"``: brushed metal, fine streaks in one direction;
        ``"grain"``: cast or sand-blasted metal, isotropic granular noise;
        ``"weave"``: woven fabric, a periodic over-under thread pattern.
    defect_types : str or sequence of str, default=DEFECT_TYPES
        Defect types to draw from: any of ``"scratch"``, ``"crack"``,
        ``"spot"``, ``"contamination"``.
    max_defects_per_image : int, default=1
        Each anomalous image gets between 1 and this many defects.
    shuffle : bool, default=False
        False returns the ``n_normal`` normal images first, then the
        ``n_anomalous`` anomalous ones; True shuffles them (with the same
        random state).
    random_state : int, RandomState instance or None, default=None
        Seed for reproducible output: equal seeds give identical data.

    Returns
    -------
    X : ndarray of shape (n, H, W) or (n, H, W, 3), dtype uint8
        The images, ``n = n_normal + n_anomalous``.
    y : ndarray of shape (n,), dtype int
        ``+1`` for normal images, ``-1`` for images with defects.
    masks : ndarray of shape (n, H, W), dtype bool
        ``True`` where a defect changed the pixel by at least 8 gray levels or
        lies inside a contamination's outline; all ``False`` for normal images.
        Pixels outside the mask differ from the defect-free rendering by at
        most 8 gray levels.

    See Also
    --------
    make_surface_train_test : The same surfaces split into a normal-only
        training set and a labelled test set.

    Examples
    --------
    >>> from skflow_ad.datasets import make_surface_defects
    >>> X, y, masks = make_surface_defects(8, 2, image_size=32, random_state=0)
    >>> X.shape, X.dtype, masks.shape
    ((10, 32, 32), dtype('uint8'), (10, 32, 32))
    >>> y.tolist()
    [1, 1, 1, 1, 1, 1, 1, 1, -1, -1]
    """
    shuffle = check_bool(shuffle, "shuffle")
    data = _generate_surfaces(
        n_normal,
        n_anomalous,
        image_size=image_size,
        color=color,
        texture=texture,
        defect_types=defect_types,
        max_defects_per_image=max_defects_per_image,
        random_state=random_state,
    )
    X, y, masks = data.X, data.y, data.masks
    if shuffle:
        order = data.rng.permutation(len(y))
        X, y, masks = X[order], y[order], masks[order]
    return X, y, masks


def make_surface_train_test(
    n_train=200,
    n_test_normal=50,
    n_test_anomalous=50,
    *,
    image_size=64,
    color=False,
    texture="brushed",
    defect_types=DEFECT_TYPES,
    max_defects_per_image=1,
    random_state=None,
):
    """Synthetic surfaces split like an anomaly-detection benchmark.

    A normal-only training set and a shuffled, labelled test set of the
    surfaces described in :func:`make_surface_defects`. The returned
    :class:`~sklearn.utils.Bunch` has the same keys as the one from
    :func:`load_mvtec_folder` (without the file paths), so code written for
    one runs on the other.

    Parameters
    ----------
    n_train : int, default=200
        Number of defect-free training images.
    n_test_normal : int, default=50
        Number of defect-free test images.
    n_test_anomalous : int, default=50
        Number of test images with defects.
    image_size, color, texture, defect_types, max_defects_per_image, random_state
        As in :func:`make_surface_defects`.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        - ``X_train``: ndarray ``(n_train, H, W)`` or ``(n_train, H, W, 3)``, uint8, normal images;
        - ``X_test``: ndarray ``(n_test, H, W)`` or ``(n_test, H, W, 3)``, uint8, shuffled;
        - ``y_test``: ndarray ``(n_test,)``, ``+1`` normal, ``-1`` anomalous;
        - ``masks_test``: ndarray ``(n_test, H, W)``, bool, ``True`` on defect pixels;
        - ``defect_types``: ndarray ``(n_test,)`` of str, ``"good"``, the defect
          type, or ``"combined"`` for an image with defects of several types;
        - ``texture``: the surface texture;
        - ``DESCR``: a description of the data.

    Examples
    --------
    >>> from skflow_ad.datasets import make_surface_train_test
    >>> data = make_surface_train_test(20, 5, 5, image_size=32, random_state=0)
    >>> data.X_train.shape, data.X_test.shape, int((data.y_test == -1).sum())
    ((20, 32, 32), (10, 32, 32), 5)
    """
    n_train = check_count(n_train, "n_train")
    n_test_normal = check_count(n_test_normal, "n_test_normal")
    n_test_anomalous = check_count(n_test_anomalous, "n_test_anomalous")
    data = _generate_surfaces(
        n_train + n_test_normal,
        n_test_anomalous,
        image_size=image_size,
        color=color,
        texture=texture,
        defect_types=defect_types,
        max_defects_per_image=max_defects_per_image,
        random_state=random_state,
    )
    test_order = n_train + data.rng.permutation(len(data.y) - n_train)
    description = (
        f"Synthetic {texture!r} surfaces ({'RGB' if color else 'gray'}, "
        f"{data.X.shape[1]} x {data.X.shape[2]} px): "
        f"{n_train} normal training images; {len(test_order)} shuffled test images, "
        f"{n_test_anomalous} of them with planted defects ({', '.join(_check_defect_types(defect_types))}) "
        f"covering {DEFECT_AREA_RANGE[0]:.1%}-{DEFECT_AREA_RANGE[1]:.0%} of the image."
    )
    return Bunch(
        X_train=data.X[:n_train],
        X_test=data.X[test_order],
        y_test=data.y[test_order],
        masks_test=data.masks[test_order],
        defect_types=data.defect_types[test_order],
        texture=texture,
        DESCR=description,
    )
