"""The package's conventions for scores, labels and masks, in one place.

- ``score_samples``: higher means more normal (scikit-learn's outlier
  detectors); an *anomaly score* is its negation, higher means more anomalous,
  and is what :mod:`skflow_ad.metrics` takes.
- ``decision_function = score_samples - offset_``; ``predict`` is +1 for normal
  and -1 for anomalous samples (negative decision).
- Image labels ``y_true`` may use any of these conventions, recognised from
  the set of values present: ``{+1, -1}`` (+1 normal, -1 anomalous, as
  ``predict``), ``{0, 1}`` (1 anomalous) or booleans (True anomalous).
  Anything else, or a single class where both are needed, raises
  ``ValueError``; labels are never silently inverted.
- Masks: boolean arrays, or numeric arrays with values in ``{0, 1}`` or
  ``{0, 255}``; True / nonzero on anomalous pixels. Masks and maps come as
  ``(n, H, W)`` arrays (or one ``(H, W)`` image) or lists of ``(H, W)`` arrays
  of per-image sizes. Torch tensors are accepted anywhere arrays are.

Torch-free, like everything the exported-model runtime uses.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "ANOMALOUS",
    "LABEL_CONVENTIONS",
    "NORMAL",
    "anomalous_from_labels",
    "as_image_list",
    "check_mask",
    "check_scores",
    "is_tensor",
    "labels_from_decision",
    "to_numpy",
]

#: ``predict``'s label of a normal sample.
NORMAL = 1
#: ``predict``'s label of an anomalous sample.
ANOMALOUS = -1


def labels_from_decision(decision):
    """+1 (normal) where ``decision >= 0``, -1 (anomalous) where it is negative, shape ``(n,)``."""
    return np.where(np.asarray(decision) < 0, ANOMALOUS, NORMAL)


#: The accepted image labellings, for error messages.
LABEL_CONVENTIONS = (
    "{+1 normal, -1 anomalous}, {0 normal, 1 anomalous} or booleans "
    "(True = anomalous)"
)


def is_tensor(value):
    """Whether ``value`` is a torch tensor (recognised without importing torch)."""
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def to_numpy(values, name="values"):
    """A numpy array of ``values``: torch tensors are detached and moved to the CPU (half
    precisions widened to float32), other byte orders converted to the native one.

    Torch is never imported here: tensors are recognised by their type's module.
    """
    if is_tensor(values):
        values = values.detach().cpu()
        if str(values.dtype) in ("torch.bfloat16", "torch.float16"):
            values = values.float()
        values = values.numpy()
    try:
        array = np.asarray(values)
    except ValueError as error:
        raise ValueError(f"{name} could not be converted to an array: {error}") from None
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def anomalous_from_labels(y_true, name):
    """Boolean ``(n,)`` array, True for anomalous, from any accepted labelling."""
    labels = to_numpy(y_true, name)
    if labels.ndim != 1:
        raise ValueError(f"{name} must be 1-d of shape (n,), got shape {labels.shape}.")
    if labels.size == 0:
        raise ValueError(f"{name} is empty.")
    if labels.dtype == np.bool_:
        is_anomalous = labels
    elif np.issubdtype(labels.dtype, np.integer) or np.issubdtype(
        labels.dtype, np.floating
    ):
        values = set(np.unique(labels).tolist())
        if values == {-1, 1}:
            is_anomalous = labels == -1
        elif values == {0, 1}:
            is_anomalous = labels == 1
        elif len(values) == 1:
            raise ValueError(
                f"{name} contains a single label value {values.pop()!r}: both normal "
                f"and anomalous samples are needed (labels: {LABEL_CONVENTIONS})."
            )
        else:
            raise ValueError(
                f"{name} has labels {sorted(values)}, which match no known "
                f"convention; expected {LABEL_CONVENTIONS}."
            )
    else:
        raise ValueError(
            f"{name} has dtype {labels.dtype}; expected numeric labels "
            f"{LABEL_CONVENTIONS}."
        )
    if is_anomalous.all() or not is_anomalous.any():
        kind = "anomalous" if is_anomalous.all() else "normal"
        raise ValueError(
            f"{name} contains only {kind} samples: both normal and anomalous samples "
            "are needed."
        )
    return is_anomalous


def check_scores(scores, name, expected_ndim=1):
    """Finite real scores as a float numpy array."""
    array = to_numpy(scores, name)
    if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.float64)
    elif not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name} must contain real numbers, got dtype {array.dtype}.")
    if expected_ndim is not None and array.ndim != expected_ndim:
        shape = "(n,)" if expected_ndim == 1 else "(H, W)"
        raise ValueError(
            f"{name} must be {expected_ndim}-d of shape {shape}, got shape {array.shape}."
        )
    if array.size == 0:
        raise ValueError(f"{name} is empty.")
    if np.isnan(array).any():
        raise ValueError(f"{name} contains NaN.")
    if np.isinf(array).any():
        raise ValueError(f"{name} contains infinite values.")
    return array


def check_mask(mask, name):
    """Boolean ``(H, W)`` mask from a bool, {0, 1} or {0, 255} array."""
    if mask.dtype == np.bool_:
        return mask
    if not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
        raise ValueError(f"{name} must be boolean or numeric, got dtype {mask.dtype}.")
    is_anomalous = mask != 0
    anomalous_values = mask[is_anomalous]
    if anomalous_values.size and not (
        (anomalous_values == 1).all() or (anomalous_values == 255).all()
    ):
        found = np.unique(mask).tolist()
        shown = found if len(found) <= 6 else found[:6] + ["..."]
        raise ValueError(
            f"{name} has values {shown}; masks must be boolean, {{0, 1}} or "
            "{0, 255} with nonzero = anomalous pixel."
        )
    return is_anomalous


def as_image_list(images, name):
    """List of 2-d numpy arrays from an ``(n, H, W)`` / ``(H, W)`` array or a list."""
    if isinstance(images, (list, tuple)):
        arrays = [to_numpy(image, f"{name}[{index}]") for index, image in enumerate(images)]
        for index, array in enumerate(arrays):
            if array.ndim != 2:
                raise ValueError(
                    f"{name}[{index}] must be 2-d (H, W), got shape {array.shape}."
                )
    else:
        array = to_numpy(images, name)
        if array.ndim == 2:
            arrays = [array]
        elif array.ndim == 3:
            arrays = list(array)
        else:
            raise ValueError(
                f"{name} must have shape (n, H, W) or (H, W), or be a list of (H, W) "
                f"arrays; got shape {array.shape}."
            )
    if len(arrays) == 0 or all(array.size == 0 for array in arrays):
        raise ValueError(f"{name} is empty.")
    return arrays
