r"""Tree NFA: a-contrario test of the upper level sets of the latent energy.

The segmentation of the current (journal) version of U-Flow: Tailanian, Pardo
& Musé, *U-Flow: A U-shaped Normalizing Flow for Anomaly Detection with
Unsupervised Threshold*, J. Math. Imaging Vision 2024 (arXiv:2211.12353 v3+;
``nfa_tree.py`` in github.com/mtailanian/uflow, written here from the
mathematics, not from that code).

Null hypothesis
    :math:`H_0`: the latent entries of a normal image are i.i.d. standard
    normal. At scale ``s``, the *energy* of latent pixel ``i``,
    :math:`E_i = \sum_{c=1}^{C_s} z_{c,i}^2` (the whole latent volume at that
    pixel, not a channel average), is then :math:`\chi^2_{C_s}`, independently
    over pixels and scales.

Candidate regions
    The connected components (4-connectivity) of the upper level sets
    :math:`\{E \geq \lambda\}`, for every :math:`\lambda`, nest into a tree,
    the max-tree of ``E`` (built with higra). A node ``R`` has a level
    :math:`\lambda_R = \min_{i \in R} E_i` and an area :math:`|R|`.

Test statistic and tail
    For a fixed connected region ``R``, :math:`P_{H_0}(\min_{i \in R} E_i
    \geq \lambda) = P(\chi^2_{C_s} \geq \lambda)^{|R|}`, so
    :math:`\log_{10} P(R) = |R| \log_{10} P(\chi^2_{C_s} \geq \lambda_R)` is
    the log p-value of the node. The paper bounds the chi-square tail with
    the Chernoff bound :math:`(u e^{1-u})^{C_s/2}`, :math:`u = \lambda / C_s
    \geq 1`; here the tail is exact (the regularized upper incomplete gamma
    function, in log space) and, where it underflows double precision, the
    upper bound :math:`\Gamma(a, x) \leq x^{a-1} e^{-x} / (1 - (a-1)/x)`
    (:math:`a = C_s/2 \geq 1`, :math:`x = \lambda/2 > a - 1`; without the
    last factor for :math:`a < 1`). Both give valid p-values; the exact tail is
    the smaller (more powerful). The Chernoff expression bounds the tail only
    above the mean (:math:`\lambda \geq C_s`); applied below it, as the
    authors' code does, it would make low-energy regions look significant.

Selection of the regions (the paper's Procedures 1 and 2)
    Among nested candidates the most significant ones are kept:
    *prune*: every chain of nested nodes that starts at a leaf and goes up
    through parents with a single child keeps only its node of lowest
    :math:`\log_{10} P` (ties: the larger region); *merge*: sibling leaves
    are replaced by their parent when the parent is at least as significant
    as each of them. The two are repeated until nothing changes; the leaves
    of the final tree are the detections (disjoint regions). Equivalently,
    the subtree of a node collapses into one detection when every node of it
    with two or more children is at least as significant as all its
    descendants; the detection of a maximal such subtree is its most
    significant node (the largest among ties). This closed form is what the
    fast path evaluates, with a few tree accumulations (no loop over nodes);
    :func:`tree_log_nfa_reference` runs the procedures literally.

Number of tests
    The tested regions depend on the data, so the count must cover every
    region that could have been a node: every 4-connected set of pixels
    (polyomino) of the :math:`h_s \times w_s` latent grid. The number of fixed
    polyominoes of ``r`` cells is approximated by :math:`\alpha \beta^r / r`
    (:math:`\alpha = 0.316915`, :math:`\beta = 4.062570`, the values the paper
    takes from the asymptotic enumeration of polyominoes), so with
    :math:`N_s = h_s w_s` positions the paper counts
    :math:`N_T = \sum_s N_s \sum_{r=1}^{N_s} \alpha \beta^r / r` tests per
    image (:func:`log10_number_of_region_tests`).

Decision across scales
    Each pixel of a scale takes the :math:`\log_{10} P` of the detection that
    contains it (0 elsewhere); these maps are upsampled bilinearly to the
    output size, the minimum is taken over scales, and :math:`\log_{10} N_T`
    is added: ``log10 NFA``. ``log10 NFA < log_epsilon`` is the segmentation.
    Because every detection is a region whose p-value times :math:`N_T` is
    below :math:`\epsilon`, and at most :math:`N_T` regions exist, the
    expected number of false detections per normal image is at most
    :math:`\epsilon`. The union bound is very conservative: the count is
    dominated by the largest regions, about :math:`N_s \log_{10} \beta \approx
    0.61 N_s` decades (2493 for a 64 x 64 grid), which the p-value of a
    detection must beat whatever its size.

Counting per size (``count="per_size"``, an option, not the paper's)
    The same union bound, split by region size: the detections of ``r``
    pixels at scale ``s`` are drawn from at most :math:`n_{s,r} = N_s \alpha
    \beta^r / r` polyominoes, and each of the :math:`S \cdot N_s` strata
    (scale, size) gets the share :math:`w = 1 / (S N_s)` of epsilon. A region
    ``R`` of ``r`` pixels at scale ``s`` then has
    :math:`\mathrm{NFA}(R) = S N_s \, n_{s,r} \, P(R)`
    (:func:`log10_region_tests_per_size`), and the expected number of false
    detections is at most :math:`\sum_{s,r} n_{s,r} \, \epsilon w / n_{s,r} =
    \epsilon`, as before. A region pays for the regions of its own size
    only: about :math:`0.61 r + 2 \log_{10} N_s + \log_{10} S` decades
    (11 for 10 pixels of a 32 x 32 grid with 3 scales, against 623 with the
    paper's count), so small and medium defects are found on much weaker
    evidence, while the guarantee on normal images is the same. The prune and
    merge procedures then compare NFAs (the count differs between nested
    regions), and a pixel outside every detection gets the NFA of a one-pixel
    region with ``P = 1``.
"""

from __future__ import annotations

import functools
import math

import higra as hg
import numpy as np
from scipy import ndimage
from scipy.special import gammaincc, gammaln, logsumexp

from ..resample import as_map_size, resize_maps
from ._arguments import check_n_channels, check_scale_maps

__all__ = [
    "TREE_COUNTS",
    "POLYOMINO_ALPHA",
    "POLYOMINO_BETA",
    "log10_chi2_tail",
    "log10_number_of_region_tests",
    "log10_region_tests_per_size",
    "region_log10_probability_map",
    "tree_log_nfa",
    "tree_log_nfa_reference",
]

#: ``count`` values of :func:`tree_log_nfa`: the paper's count of every region of the grid, or per size.
TREE_COUNTS = ("all_sizes", "per_size")

#: Asymptotic count of fixed polyominoes of ``r`` cells: ``POLYOMINO_ALPHA * POLYOMINO_BETA**r / r``.
POLYOMINO_ALPHA = 0.316915
POLYOMINO_BETA = 4.062570

# Below this natural-log tail the exact value is near double underflow: use the bound.
_LOG_TAIL_UNDERFLOW = -700.0

# Energy of the rows separating stacked images: below any energy, so no region crosses it.
_SEPARATOR = -1.0


def log10_chi2_tail(energy, df):
    """``log10 P(chi2_df >= energy)``, exact, or an upper bound where that underflows.

    Parameters
    ----------
    energy : array-like
        Chi-square values (energies ``sum_c z**2``).
    df : int
        Degrees of freedom (latent channels).

    Returns
    -------
    ndarray of float64
        Same shape as ``energy``; 0 for ``energy <= 0``.
    """
    shape = np.shape(energy)
    a = df / 2.0
    x = np.maximum(np.asarray(energy, dtype=np.float64).reshape(-1), 0.0) / 2.0
    with np.errstate(divide="ignore"):
        log_tail = np.log(gammaincc(a, x))
    small = log_tail < _LOG_TAIL_UNDERFLOW
    if np.any(small):
        x = x[small]
        # Gamma(a, x) <= x**(a-1) e**-x / (1 - (a-1)/x) for a >= 1 and x > a - 1 (here x >> a).
        log_gamma = (a - 1.0) * np.log(x) - x
        if a > 1.0:
            log_gamma -= np.log1p(-(a - 1.0) / x)
        log_tail[small] = np.minimum(log_gamma - gammaln(a), 0.0)
    return (log_tail / np.log(10.0)).reshape(shape)


def log10_number_of_region_tests(n_pixels):
    """log10 of the number of polyominoes that fit at ``n_pixels`` positions, summed over scales.

    Parameters
    ----------
    n_pixels : int or list of int
        ``h_s * w_s`` of each scale.

    Returns
    -------
    float
        ``log10(sum_s N_s * sum_{r=1}^{N_s} alpha * beta**r / r)``.
    """
    sizes = [n_pixels] if np.isscalar(n_pixels) else list(n_pixels)
    per_scale = []
    for size in sizes:
        r = np.arange(1, int(size) + 1, dtype=np.float64)
        log_count = logsumexp(math.log(POLYOMINO_ALPHA) + r * math.log(POLYOMINO_BETA) - np.log(r))
        per_scale.append(math.log(size) + log_count)
    return float(logsumexp(per_scale) / math.log(10.0))


def log10_region_tests_per_size(n_pixels, n_scales):
    """log10 of the per-size count of one scale: ``S * N_s * n_{s,r}`` for ``r = 0 .. N_s``.

    Parameters
    ----------
    n_pixels : int
        ``N_s = h_s * w_s`` of the scale.
    n_scales : int
        ``S``, the number of scales the decision is taken across.

    Returns
    -------
    ndarray of shape (N_s + 1,), float64
        Entry ``r`` is ``log10(S * N_s * N_s * alpha * beta**r / r)``; entry 0
        (no region has 0 pixels) is ``inf``.
    """
    r = np.arange(1, int(n_pixels) + 1, dtype=np.float64)
    table = (
        math.log10(n_scales) + 2.0 * math.log10(n_pixels) + math.log10(POLYOMINO_ALPHA)
        + r * math.log10(POLYOMINO_BETA) - np.log10(r)
    )
    return np.concatenate([[np.inf], table])


@functools.lru_cache(maxsize=32)
def _grid_graph(shape):
    """The 4-adjacency graph of a ``shape`` grid (built once per shape)."""
    return hg.get_4_adjacency_graph(shape)


def region_log10_probability_map(energies, n_channels, log10_tests_by_area=None):
    """Per-pixel log10 p-value (or NFA) of the detected region containing it, one scale.

    Parameters
    ----------
    energies : ndarray of shape (n, h, w)
        Latent energies ``sum_c z**2`` of one scale.
    n_channels : int
        Latent channels of the scale (the chi-square degrees of freedom).
    log10_tests_by_area : ndarray of shape (h * w + 1,), optional
        A count of tests that depends on the region's area
        (:func:`log10_region_tests_per_size`): regions are then selected and
        reported by ``log10 P + log10_tests_by_area[|R|]``, their log10 NFA.

    Returns
    -------
    ndarray of shape (n, h, w), float64
        ``|R| log10 P(chi2_C >= level(R))`` of the detection ``R`` containing
        the pixel, 0 where no detection does; with ``log10_tests_by_area``,
        the detection's log10 NFA, and ``log10_tests_by_area[1]`` elsewhere.
    """
    n_images, height, width = energies.shape
    values = energies.astype(np.float64)
    if n_images > 1:
        # One max-tree for the batch: images stacked, separated by a row lower than any
        # energy, so components never cross images and join only at the root.
        values = np.concatenate(
            [values, np.full((n_images, 1, width), _SEPARATOR)], axis=1
        ).reshape(n_images * (height + 1), width)[:-1]
    else:
        values = values[0]
    tree, level = hg.component_tree_max_tree(_grid_graph(values.shape), values)
    n_leaves = tree.num_leaves()
    n_nodes = tree.num_vertices()
    parents = tree.parents()
    root = tree.root()
    is_region = np.arange(n_nodes) >= n_leaves  # pixels are the leaves; regions the inner nodes

    area = hg.attribute_area(tree)
    log_p = np.full(n_nodes, np.inf)  # leaves are neutral for the minima below
    log_p[is_region] = area[is_region] * log10_chi2_tail(level[is_region], n_channels)
    outside = 0.0
    if log10_tests_by_area is not None:
        # Regions larger than one image exist only in a stacked batch (through the separators).
        fits = is_region & (area < len(log10_tests_by_area))
        log_p[is_region & ~fits] = np.inf
        log_p[fits] += log10_tests_by_area[area[fits].astype(np.int64)]
        outside = float(log10_tests_by_area[1])

    subtree_min = hg.accumulate_and_min_sequential(tree, log_p, log_p[:n_leaves], hg.Accumulators.min)
    descendants_min = hg.accumulate_parallel(tree, subtree_min, hg.Accumulators.min)
    region_children = np.bincount(parents[is_region & (np.arange(n_nodes) != root)], minlength=n_nodes)
    blocks_collapse = is_region & (region_children >= 2) & (log_p > descendants_min)
    blocked_below = hg.accumulate_and_max_sequential(
        tree, blocks_collapse.astype(np.float64), np.zeros(n_leaves), hg.Accumulators.max
    )
    collapses = is_region & (blocked_below == 0)
    top = collapses & ~collapses[parents]
    top[root] = collapses[root]

    # Each maximal collapsing subtree keeps its most significant node, the highest among ties.
    target = hg.propagate_sequential(tree, np.where(top, subtree_min, np.nan), ~top)
    candidate = collapses & (log_p == target)
    candidate_above = hg.propagate_sequential_and_accumulate(tree, candidate.astype(np.float64), hg.Accumulators.max)
    detection = candidate & (candidate_above[parents] == 0)
    detection[root] = candidate[root]

    pixel_log_p = hg.propagate_sequential(tree, np.where(detection, log_p, outside), ~detection)[:n_leaves]
    if n_images > 1:
        pixel_log_p = np.concatenate([pixel_log_p, np.zeros(width)]).reshape(n_images, height + 1, width)[:, :height]
    return pixel_log_p.reshape(n_images, height, width)


def tree_log_nfa(energies, n_channels, output_size, *, count="all_sizes"):
    """log10 NFA of every pixel by the tree (upper level set) test of the U-Flow paper.

    Parameters
    ----------
    energies : list of array-like of shape (n, h_s, w_s)
        Per scale, finest first, the latent energy ``sum_c z**2`` of each
        latent pixel (see :func:`skflow_ad.nfa.latent_statistics`).
    n_channels : list of int
        Latent channels ``C_s`` of each scale.
    output_size : int or (H, W)
        Size of the returned maps.
    count : {"all_sizes", "per_size"}, default="all_sizes"
        The number of tests: the paper's (every region of the grid, whatever
        the detection's size) or per size (module docstring); both bound the
        expected false detections per normal image by epsilon.

    Returns
    -------
    log_nfa : ndarray of shape (n, H, W), float32
        log10 NFA (module docstring); lower is more anomalous, below 0 means
        the pixel belongs to a region with NFA < 1. Pixels outside every
        detection get ``log10 N_T`` (per size: the count of one pixel).

    Raises
    ------
    ValueError
        On a malformed argument or a negative or non-finite energy.
    """
    energies, n_channels, output_size = _check_arguments(energies, n_channels, output_size, count)
    per_size = count == "per_size"
    lowest = None
    for scale_energies, channels in zip(energies, n_channels):
        table = log10_region_tests_per_size(scale_energies[0].size, len(energies)) if per_size else None
        scale_map = region_log10_probability_map(scale_energies, channels, table).astype(np.float32)
        upsampled = resize_maps(scale_map, output_size)
        lowest = upsampled if lowest is None else np.minimum(lowest, upsampled)
    if per_size:
        return lowest.astype(np.float32)
    log_n_tests = log10_number_of_region_tests([e.shape[1] * e.shape[2] for e in energies])
    return (lowest + np.float32(log_n_tests)).astype(np.float32)


def _check_arguments(energies, n_channels, output_size, count):
    if count not in TREE_COUNTS:
        raise ValueError(f"count must be one of {', '.join(map(repr, TREE_COUNTS))}; got {count!r}.")
    output_size = as_map_size(output_size)
    energies = check_scale_maps(energies, "energies", "real")
    n_channels = check_n_channels(n_channels, len(energies))
    for scale, scale_energies in enumerate(energies):
        if not np.isfinite(scale_energies).all() or scale_energies.min() < 0:
            raise ValueError(
                f"energies[{scale}] must be finite and >= 0 (sums of squared latents); "
                f"got values in [{scale_energies.min()}, {scale_energies.max()}]."
            )
    return energies, n_channels, output_size


def _upper_level_set_tree(energy):
    """Nodes of the max-tree of a 2-d map by explicit thresholding, for the reference.

    Returns
    -------
    regions : list of frozenset of int
        Flat pixel indices of every distinct connected component of every
        upper level set ``{energy >= level}`` (4-connectivity).
    parent : list of int or None
        Index of the smallest region strictly containing each region.
    """
    regions = set()
    for level in np.unique(energy):
        labels, n_labels = ndimage.label(energy >= level)
        flat = labels.ravel()
        regions.update(frozenset(np.flatnonzero(flat == label).tolist()) for label in range(1, n_labels + 1))
    regions = sorted(regions, key=len)
    parent = []
    for index, region in enumerate(regions):
        supersets = [j for j in range(index + 1, len(regions)) if region < regions[j]]
        parent.append(min(supersets, key=lambda j: len(regions[j])) if supersets else None)
    return regions, parent


def _select_detections_reference(log_p, parent):
    """The paper's prune and merge procedures, run literally until nothing changes."""
    parent = dict(enumerate(parent))

    def children(node):
        return [child for child, up in parent.items() if up == node]

    def remove(node):
        for child in children(node):
            parent[child] = parent[node]
        del parent[node]

    def prune():
        for leaf in [node for node in parent if not children(node)]:
            if leaf not in parent:
                continue
            chain = [leaf]
            while parent[chain[-1]] is not None and len(children(parent[chain[-1]])) == 1:
                chain.append(parent[chain[-1]])
            best = min(log_p[node] for node in chain)
            keep = [node for node in chain if log_p[node] == best][-1]  # ties: the larger region
            for node in chain:
                if node != keep:
                    remove(node)

    prune()
    merged = True
    while merged:
        merged = False
        for node in list(parent):
            if node not in parent:
                continue
            kids = children(node)
            if len(kids) >= 2 and not any(children(kid) for kid in kids):
                if log_p[node] <= min(log_p[kid] for kid in kids):
                    for kid in kids:
                        del parent[kid]
                    merged = True
        prune()
    return [node for node in parent if not children(node)]


def tree_log_nfa_reference(energies, n_channels, output_size, *, count="all_sizes"):
    """Literal implementation of :func:`tree_log_nfa`, for tests.

    The regions are enumerated by thresholding at every level and labelling
    connected components (``scipy.ndimage.label``), the chi-square tail is
    ``scipy.special.gammaincc``, and the prune/merge procedures are applied
    one node at a time until the tree no longer changes. Same arguments and
    result (float64) as :func:`tree_log_nfa`. Slow: small maps only.
    """
    energies, n_channels, output_size = _check_arguments(energies, n_channels, output_size, count)
    per_size = count == "per_size"
    lowest = None
    for scale_energies, channels in zip(energies, n_channels):
        n_pixels = scale_energies[0].size
        scale_map = np.zeros(scale_energies.shape)
        for image, energy in enumerate(scale_energies.astype(np.float64)):
            regions, parent = _upper_level_set_tree(energy)
            log_p = [
                len(region) * math.log10(gammaincc(channels / 2.0, energy.ravel()[list(region)].min() / 2.0))
                + (_per_size_count(n_pixels, len(energies), len(region)) if per_size else 0.0)
                for region in regions
            ]
            if per_size:
                scale_map[image] = _per_size_count(n_pixels, len(energies), 1)
            flat = scale_map[image].reshape(-1)
            for node in _select_detections_reference(log_p, parent):
                flat[list(regions[node])] = log_p[node]
        upsampled = resize_maps(scale_map, output_size).astype(np.float64)
        lowest = upsampled if lowest is None else np.minimum(lowest, upsampled)
    if per_size:
        return lowest
    return lowest + log10_number_of_region_tests([e.shape[1] * e.shape[2] for e in energies])


def _per_size_count(n_pixels, n_scales, area):
    """``log10(S * N_s * N_s * alpha * beta**r / r)``, written out for the reference."""
    return math.log10(n_scales * n_pixels * n_pixels * POLYOMINO_ALPHA * POLYOMINO_BETA**area / area)
