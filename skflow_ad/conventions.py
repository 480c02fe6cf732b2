"""The package's conventions for scores, labels and masks, in one place.

- ``score_samples``: higher means more normal (scikit-learn's outlier
  detectors); an *anomaly score* is its negation, higher means more anomalous,
  and is what :mod:`skflow_ad.metrics` takes.
- ``decision_function = score_samples - offset_``; ``predict`` is +1 for normal
  and -1 for anomalous samples (negative decision).
- Masks: True (or nonzero) on anomalous pixels.
"""

from __future__ import annotations

import numpy as np

__all__ = ["NORMAL", "ANOMALOUS", "labels_from_decision"]

#: ``predict``'s label of a normal sample.
NORMAL = 1
#: ``predict``'s label of an anomalous sample.
ANOMALOUS = -1


def labels_from_decision(decision):
    """+1 (normal) where ``decision >= 0``, -1 (anomalous) where it is negative, shape ``(n,)``."""
    return np.where(np.asarray(decision) < 0, ANOMALOUS, NORMAL)
