r"""A-contrario anomaly segmentation from normalizing-flow latents (numpy, no torch).

A flow trained on normal images maps them to latents whose entries are, under
the null hypothesis :math:`H_0` ("this image is normal"), i.i.d. standard
normal. A region is detected when it is too unlikely under :math:`H_0` for
the number of regions that could have been tested: its *Number of False
Alarms* (Desolneux, Moisan & Morel), ``NFA = N_tests * P_H0``, is below
``epsilon``, so that on normal images at most ``epsilon`` false detections are
expected per image (``epsilon = 1``, ``log_epsilon = 0`` by default). This is
the segmentation of U-Flow (Tailanian, Pardo & Musé, J. Math. Imaging Vision
2024, arXiv:2211.12353): no label and no threshold to tune.

Two tests, each from per-pixel statistics of the latents at every scale
(:func:`latent_statistics`), so that a network head can compute those
statistics and this package the rest:

- :func:`tree_log_nfa` (``method="tree"``, the default): the current paper.
  The regions are the connected components of the upper level sets of the
  energy ``sum_c z**2`` (a max-tree), each tested exactly with a chi-square
  tail, the most significant ones kept, counted against every polyomino of
  the latent grid. Derivation: :mod:`skflow_ad.nfa.tree`. Its
  ``count="per_size"`` option splits the same union bound by region size
  (each region pays for the regions of its own size only): far more
  sensitive, with the same guarantee under the null model.
- :func:`block_log_nfa` (``method="block"``): the first version of the paper
  and anomalib's, a binomial test on counts of large entries in square
  windows, at the authors' settings (window 5, probability threshold 0.9),
  with their ``high_precision`` variant. Derivation: :mod:`skflow_ad.nfa.block`.

Both return ``log10 NFA`` maps of shape ``(n, H, W)`` (float32, lower = more
anomalous); :func:`nfa_mask` thresholds them (True = anomalous pixel).
Latents are lists of ``(n, C_s, h_s, w_s)`` arrays, finest scale first.
"""

from .block import block_log_nfa, chi2_threshold
from .latents import latent_statistics, log_nfa, nfa_mask
from .tree import tree_log_nfa

__all__ = [
    "block_log_nfa",
    "chi2_threshold",
    "latent_statistics",
    "log_nfa",
    "nfa_mask",
    "tree_log_nfa",
]
