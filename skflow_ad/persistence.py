"""Model files: a fitted detector in one file that loads without unpickling anything.

:func:`save` (also ``detector.save(path)``) writes a zip archive, by
convention with the suffix ``.skad`` (any name is accepted), holding two
entries:

``manifest.json``
    ``format`` (``"skflow_ad.model"``) and ``format_version``
    (:data:`FORMAT_VERSION`); ``class``, the detector's class name (only the
    package's own detectors load: names are looked up in a fixed table, no
    import path is ever followed); ``versions`` of skflow_ad, torch, timm,
    FrEIA, scikit-learn, numpy, safetensors and Python; ``params``, all
    ``get_params()``; ``fitted``, every fitted attribute (``offset_``,
    ``pixel_threshold_``, ``image_size_``, ``feature_shapes_``,
    ``latent_shapes_``, the loss curves..., the parameters used at fit time,
    the seed and the precision); ``weights``, the name of the weights entry,
    its SHA-256 checksum and the prefix of each network's tensors in it.
    Values JSON cannot hold are written as one-key objects whose key starts
    with ``$``: ``{"$tuple": [...]}``, ``{"$path": "..."}``, ``{"$float": "nan"}``,
    ``{"$dtype": "float64"}``, ``{"$random_state": {...}}`` (a NumPy
    ``RandomState``), ``{"$str_array": [...]}`` (feature names) and
    ``{"$array": "array.<name>"}`` (a numeric array stored with the weights).
``weights.safetensors``
    The flow's and the extractor's state dicts (keys prefixed ``flow.`` and
    ``extractor.``) and the numeric arrays of the fitted state (``array.``),
    in the safetensors format, which holds tensors and nothing else.

:func:`load` reads the manifest, checks the checksum, rebuilds the networks
from the saved parameters and loads the weights into them (strictly), through
the detector's ``__setstate__``, the code that also restores a pickle: both
formats give the same model, with bit-identical predictions. A detector
whose backbone is a user's ``nn.Module`` has no description a manifest can
hold; save it with joblib (a pickle: load it only from a trusted source).

Both formats record the versions of the packages the model depends on;
loading a model saved under another skflow_ad, torch, timm or FrEIA version
warns (:class:`ModelVersionWarning`). A file that is not a model, or is
damaged, raises :class:`ModelFileError` with one sentence saying why.
:func:`load_model` loads either format (the command line uses it), pickles
only when allowed.

This module imports torch only when a model is saved or loaded.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import numbers
import os
import platform
import re
import tempfile
import warnings
import zipfile
import zlib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

__all__ = [
    "FORMAT_VERSION", "ModelFileError", "ModelVersionWarning", "atomic_destination", "current_versions", "load",
    "load_model", "save",
]

#: Version of the model-file layout that :func:`save` writes and :func:`load` reads.
FORMAT_VERSION = 1

FORMAT_NAME = "skflow_ad.model"
MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "weights.safetensors"
ARRAY_PREFIX = "array."

#: Packages whose versions a model records, by distribution name (skflow_ad's own first).
RECORDED_PACKAGES = ("skflow_ad", "torch", "timm", "FrEIA", "scikit-learn", "numpy", "safetensors")

#: Packages that define the networks: a model saved under another version of one of them warns.
CHECKED_PACKAGES = ("skflow_ad", "torch", "timm", "FrEIA")

#: Where a pickled detector's state keeps the versions it was saved with.
VERSIONS_STATE_KEY = "_saved_versions"

_CHUNK = 1 << 20

# First bytes of a plain pickle (protocols 2-5, joblib's uncompressed files) and of the
# compressors joblib.dump can use.
_PICKLE_MAGICS = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
_COMPRESSED_MAGICS = (b"\x1f\x8b", b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda", b"BZh", b"\xfd7zXZ",
                      b"\x5d\x00\x00", b"\x04\x22\x4d\x18")
_ZIP_MAGIC = b"PK\x03\x04"


class ModelFileError(ValueError):
    """A file is not a skflow_ad model or is damaged; the message says why, in one sentence."""


class ModelVersionWarning(UserWarning):
    """A model is loaded under other versions of the packages that define its networks than it was saved with.

    Modelled on scikit-learn's ``InconsistentVersionWarning``. Raised when
    loading a model file (:func:`load`) or unpickling a detector (joblib,
    pickle) saved under another version of skflow_ad, torch, timm or FrEIA
    (local version labels such as ``+cu121`` are ignored).

    Attributes
    ----------
    estimator_name : str
        The detector's class name.
    saved_versions : dict
        Version of each differing package when the model was saved (``None``
        when the model recorded no versions).
    current_versions : dict
        Version of the same packages now.
    """

    def __init__(self, *, estimator_name, saved_versions, current_versions):
        self.estimator_name = estimator_name
        self.saved_versions = dict(saved_versions)
        self.current_versions = dict(current_versions)
        super().__init__(str(self))

    def __str__(self):
        now = ", ".join(f"{name} {v}" for name, v in self.current_versions.items())
        if all(v is None for v in self.saved_versions.values()):
            saved = f"{self.estimator_name} was saved without a record of its package versions"
        else:
            saved = f"{self.estimator_name} was saved with " + ", ".join(
                f"{name} {'(unknown version)' if v is None else v}" for name, v in self.saved_versions.items()
            )
        return (
            f"{saved} and is loaded with {now}: its predictions may differ or loading may fail; "
            f"refit it under the installed versions, or install the versions it was saved with."
        )


# ------------------------------------------------------------------ versions
@functools.lru_cache(maxsize=None)
def _installed_versions():
    from . import __version__

    versions = {"skflow_ad": __version__}
    for name in RECORDED_PACKAGES[1:]:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


def current_versions():
    """The versions a model saved now records.

    Returns
    -------
    dict
        ``{package: version}`` for skflow_ad, torch, timm, FrEIA, scikit-learn,
        numpy, safetensors and python (``None`` for a package not installed).
    """
    return dict(_installed_versions())


def _public(version_string):
    return None if version_string is None else str(version_string).split("+", 1)[0]


def warn_if_versions_differ(estimator_name, saved):
    """Warn :class:`ModelVersionWarning` when ``saved`` differs from :func:`current_versions` on a checked package.

    Parameters
    ----------
    estimator_name : str
    saved : dict or None
        The versions recorded with the model; ``None`` for a model saved
        without them (which warns too).
    """
    now = current_versions()
    saved = saved if isinstance(saved, dict) else {}
    differing = [name for name in CHECKED_PACKAGES if _public(saved.get(name)) != _public(now.get(name))]
    if differing:
        warnings.warn(
            ModelVersionWarning(
                estimator_name=estimator_name,
                saved_versions={name: saved.get(name) for name in differing},
                current_versions={name: now.get(name) for name in differing},
            ),
            stacklevel=3,
        )


def record_versions(state):
    """Add :func:`current_versions` to a detector's pickled ``state`` (in place); returns it."""
    state[VERSIONS_STATE_KEY] = current_versions()
    return state


def pop_saved_versions(state):
    """Remove and return the versions recorded in a detector's ``state`` (``None`` if it has none)."""
    return state.pop(VERSIONS_STATE_KEY, None)


def summarize_state_dict_error(error, max_parts=3):
    """One line from torch's multi-line ``load_state_dict`` error: each kind of mismatch and its first key."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    parts = []
    for line in lines[1:]:
        label, _, rest = line.partition(": ")
        keys = re.findall(r'"([^"]+)"', rest)
        if keys:
            more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
            parts.append(f"{label.lower()} {keys[0]!r}{more}")
        else:
            parts.append(line.rstrip("."))
    if len(parts) > max_parts:
        parts = parts[:max_parts] + [f"{len(parts) - max_parts} more mismatches"]
    return f"{lines[0].rstrip(':')}: " + "; ".join(parts) if lines else type(error).__name__


# -------------------------------------------------------------------- values
class _Unstorable(Exception):
    def __init__(self, where, value):
        super().__init__(where)
        self.where, self.value = where, value


def _encode(value, where, arrays):
    """JSON value of ``value``; numeric arrays go into ``arrays`` and are referenced by key."""
    if value is None or type(value) is str:
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, str):
        return str(value)
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, f"{where}.{i}", arrays) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{where}.{i}", arrays) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not all(type(k) is str and not k.startswith("$") for k in value):
            raise _Unstorable(where, value)
        return {k: _encode(v, f"{where}.{k}", arrays) for k, v in value.items()}
    if isinstance(value, os.PathLike) and isinstance(os.fspath(value), str):
        return {"$path": os.fspath(value)}
    if isinstance(value, np.random.RandomState):
        _, keys, pos, has_gauss, cached_gaussian = value.get_state(legacy=True)
        return {"$random_state": {"keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                                  "cached_gaussian": float(cached_gaussian)}}
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biuf":
            key = f"{ARRAY_PREFIX}{where}"
            arrays[key] = value
            return {"$array": key}
        if value.ndim == 1 and all(type(v) is str for v in value.tolist()):
            return {"$str_array": value.tolist()}
    import torch

    if isinstance(value, torch.dtype):
        return {"$dtype": str(value).removeprefix("torch.")}
    raise _Unstorable(where, value)


def _decode_random_state(payload, arrays):
    state = ("MT19937", np.asarray(payload["keys"], dtype=np.uint32), int(payload["pos"]),
             int(payload["has_gauss"]), float(payload["cached_gaussian"]))
    random_state = np.random.RandomState()
    random_state.set_state(state)
    return random_state


def _decode_dtype(name, arrays):
    import torch

    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"{name!r} is not a torch dtype")
    return dtype


def _decode_array(key, arrays):
    if key not in arrays:
        raise ValueError(f"the weights hold no array {key!r}")
    return np.array(arrays[key].numpy(), copy=True)


_DECODERS = {
    "$tuple": lambda items, arrays: tuple(_decode(v, arrays) for v in items),
    "$float": lambda text, arrays: float({"nan": "nan", "inf": "inf", "-inf": "-inf"}[text]),
    "$path": lambda text, arrays: Path(str(text)),
    "$random_state": _decode_random_state,
    "$dtype": _decode_dtype,
    "$str_array": lambda items, arrays: np.asarray([str(v) for v in items], dtype=object),
    "$array": _decode_array,
}


def _decode(value, arrays):
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    if isinstance(value, dict):
        if len(value) == 1 and next(iter(value)).startswith("$"):
            tag, payload = next(iter(value.items()))
            if tag not in _DECODERS:
                raise ValueError(f"unknown value tag {tag!r}")
            return _DECODERS[tag](payload, arrays)
        return {k: _decode(v, arrays) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------- save
def _unstorable_message(detector, error):
    import torch

    name = type(detector).__name__
    if isinstance(error.value, torch.nn.Module):
        what = (f"its {error.where.split('.')[-1]!r} is a user's nn.Module "
                f"({type(error.value).__name__}), which a model file cannot describe")
    else:
        what = f"its {error.where!r} is a {type(error.value).__name__}, which a model file cannot hold"
    return (
        f"This {name} cannot be saved as a model file: {what}; save it with joblib.dump(detector, path) "
        f"instead, and load such a pickle only from a trusted source (unpickling runs code)."
    )


def _split_state(detector):
    """``(params, fitted, networks, versions)`` of the state a pickle of ``detector`` holds."""
    from .base import NETWORK_ATTRIBUTES

    state = dict(detector.__getstate__())
    versions = pop_saved_versions(state)
    param_names = type(detector)._get_param_names()
    params = {name: state.pop(name) for name in param_names}
    networks = {name: state.pop(name) for name in NETWORK_ATTRIBUTES if isinstance(state.get(name), dict)}
    return params, state, networks, versions


def _weight_tensors(networks, arrays):
    """Flat ``{key: contiguous CPU tensor}``; tensors sharing memory are copied (safetensors refuses sharing)."""
    import torch

    from .base import NETWORK_ATTRIBUTES

    tensors, seen = {}, set()
    prefixes = {name: name.rstrip("_") + "." for name in NETWORK_ATTRIBUTES}
    for name, state_dict in networks.items():
        for key, tensor in state_dict.items():
            tensor = tensor.detach().cpu().contiguous()
            pointer = tensor.untyped_storage().data_ptr()
            if tensor.numel() and pointer in seen:
                tensor = tensor.clone()
            seen.add(pointer)
            tensors[prefixes[name] + key] = tensor
    for key, array in arrays.items():
        tensors[key] = torch.from_numpy(np.ascontiguousarray(array).copy())
    return tensors, {name: prefixes[name] for name in networks}


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save(detector, path):
    """Write a fitted detector to one model file, loadable without unpickling.

    The file is a zip archive holding ``manifest.json`` and
    ``weights.safetensors`` (see the module documentation); the suffix
    ``.skad`` is the convention, any name is accepted. It is written to a
    temporary file next to ``path`` and moved into place when complete, so an
    interrupted save leaves a previous file at ``path`` intact.

    Parameters
    ----------
    detector : BaseFlowDetector
        A fitted :class:`~skflow_ad.UFlowDetector` or :class:`~skflow_ad.CSFlowDetector`.
    path : str or path-like
        Destination (overwritten).

    Raises
    ------
    NotFittedError
        When ``detector`` is not fitted.
    ValueError
        When the detector cannot be described by a manifest (a user's
        ``nn.Module`` as backbone): the message points to joblib.
    """
    from safetensors.torch import save_file
    from sklearn.utils.validation import check_is_fitted

    classes = _detector_classes()
    if type(detector).__name__ not in classes or classes[type(detector).__name__] is not type(detector):
        raise TypeError(
            f"save() writes skflow_ad's detectors ({', '.join(classes)}); got {type(detector).__name__}: "
            f"save it with joblib.dump instead."
        )
    check_is_fitted(detector, "flow_", msg="This %(name)s instance is not fitted yet: call 'fit' before 'save'.")
    params, fitted, networks, versions = _split_state(detector)
    arrays = {}
    try:
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "class": type(detector).__name__,
            "versions": versions,
            "params": {name: _encode(value, name, arrays) for name, value in params.items()},
            "fitted": {name: _encode(value, name, arrays) for name, value in fitted.items()},
        }
    except _Unstorable as error:
        raise ValueError(_unstorable_message(detector, error)) from None
    tensors, prefixes = _weight_tensors(networks, arrays)

    path = Path(path)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.saving-", dir=path.parent) as staging, \
            atomic_destination(path) as archive_path:
        weights_path = Path(staging) / WEIGHTS_NAME
        save_file(tensors, str(weights_path))
        manifest["weights"] = {"file": WEIGHTS_NAME, "sha256": _sha256(weights_path), "networks": prefixes}
        with zipfile.ZipFile(archive_path, "w") as archive:
            archive.writestr(MANIFEST_NAME, json.dumps(manifest, indent=1, allow_nan=False),
                             compress_type=zipfile.ZIP_DEFLATED)
            archive.write(weights_path, WEIGHTS_NAME, compress_type=zipfile.ZIP_STORED)
        with open(archive_path, "rb+") as stream:
            os.fsync(stream.fileno())


@contextlib.contextmanager
def atomic_destination(path):
    """A temporary file next to ``path``, moved onto ``path`` when the block succeeds.

    The one rule for writing files that must never be seen half-written
    (model files, pickles, exported graphs): an interrupted or failed write
    leaves an older file at ``path`` intact and no temporary file behind.

    Yields
    ------
    pathlib.Path
        Where to write, in ``path``'s folder (so the final move is atomic).
    """
    path = Path(path)
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


# ---------------------------------------------------------------------- load
def _detector_classes():
    """The classes a model file may name: the package's own detectors, by class name."""
    from .csflow import CSFlowDetector
    from .uflow import UFlowDetector

    return {cls.__name__: cls for cls in (UFlowDetector, CSFlowDetector)}


def _invalid(path, reason):
    return ModelFileError(f"{str(path)!r} is not a valid skflow_ad model file: {reason}.")


def file_kind(path):
    """What ``path`` holds, from its first bytes: ``"zip"``, ``"pickle"``, ``"damaged zip"`` or ``"unknown"``.

    ``"pickle"`` covers joblib's files, compressed or not. Raises
    ``FileNotFoundError`` when ``path`` is not a file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist.")
    with open(path, "rb") as stream:
        head = stream.read(8)
    if zipfile.is_zipfile(path):
        return "zip"
    if head.startswith(_ZIP_MAGIC):
        return "damaged zip"
    if head.startswith(_PICKLE_MAGICS) or head.startswith(_COMPRESSED_MAGICS):
        return "pickle"
    return "unknown"


def _not_a_model_file(path, kind):
    if kind == "pickle":
        return ModelFileError(
            f"{str(path)!r} is a pickle (joblib) file, not a skflow_ad model file: loading it runs the code it "
            f"contains, so use joblib.load only for files you trust."
        )
    if kind == "damaged zip":
        return _invalid(path, "it starts like a zip archive but is truncated or damaged")
    return _invalid(path, "it is neither a model file written by detector.save (a zip archive) nor a joblib pickle")


def _read_manifest(archive, path):
    try:
        text = archive.read(MANIFEST_NAME)
    except KeyError:
        raise _invalid(path, f"the zip archive has no {MANIFEST_NAME} (it was not written by detector.save)") from None
    try:
        manifest = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _invalid(path, f"its {MANIFEST_NAME} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise _invalid(path, f"its {MANIFEST_NAME} does not describe a skflow_ad model (no format {FORMAT_NAME!r})")
    format_version = manifest.get("format_version")
    if format_version != FORMAT_VERSION:
        versions = manifest.get("versions")
        saved_by = versions.get("skflow_ad") if isinstance(versions, dict) else None
        newer = isinstance(format_version, int) and format_version > FORMAT_VERSION
        raise _invalid(
            path,
            f"it has format version {format_version!r} (written by skflow_ad {saved_by}) and this skflow_ad reads "
            f"version {FORMAT_VERSION}" + ("; upgrade skflow_ad to load it" if newer else ""),
        )
    expected = {"class": str, "versions": dict, "params": dict, "fitted": dict, "weights": dict}
    for key, kind in expected.items():
        if not isinstance(manifest.get(key), kind):
            raise _invalid(path, f"its {MANIFEST_NAME} lacks a valid {key!r} entry")
    weights = manifest["weights"]
    if not (isinstance(weights.get("file"), str) and isinstance(weights.get("sha256"), str)
            and isinstance(weights.get("networks"), dict)):
        raise _invalid(path, f"its {MANIFEST_NAME} lacks a valid 'weights' entry (file, sha256, networks)")
    return manifest


def _extract_checked_weights(archive, manifest, directory, path):
    """Copy the weights entry to ``directory``, checking its SHA-256; returns the copy's path."""
    name = manifest["weights"]["file"]
    if name not in archive.namelist():
        raise _invalid(path, f"the zip archive has no {name!r}, the weights its manifest names")
    target = Path(directory) / WEIGHTS_NAME
    digest = hashlib.sha256()
    with archive.open(name) as source, open(target, "wb") as copy:
        for chunk in iter(lambda: source.read(_CHUNK), b""):
            digest.update(chunk)
            copy.write(chunk)
    if digest.hexdigest() != manifest["weights"]["sha256"]:
        raise _invalid(path, "the SHA-256 checksum of its weights does not match its manifest (the file is "
                             "damaged or was modified)")
    return target


def _read_tensors(weights_path, path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise _invalid(path, f"its weights are not a readable safetensors file ({exc})") from None


def _state_from_manifest(cls, manifest, tensors, path):
    """The state ``cls.__setstate__`` takes, as a pickle of the detector would hold it."""
    from .base import FITTED_ATTRIBUTES, NETWORK_ATTRIBUTES
    from .modes import MODES

    params, fitted = manifest["params"], manifest["fitted"]
    expected = set(cls._get_param_names())
    unknown = sorted(set(params) - expected)
    missing = sorted(expected - set(params) - set(cls._legacy_parameter_values))
    if unknown or missing:
        raise _invalid(
            path,
            f"its parameters do not match {cls.__name__} of this skflow_ad (unknown: {unknown}, missing: {missing}; "
            f"saved by skflow_ad {manifest['versions'].get('skflow_ad')})",
        )
    kind = fitted.get("input_kind_")
    if kind not in MODES:
        raise _invalid(path, f"its fitted 'input_kind_' is {kind!r}, not one of {sorted(MODES)}")
    networks = manifest["weights"]["networks"]
    if not set(networks) <= set(NETWORK_ATTRIBUTES) or not all(isinstance(p, str) for p in networks.values()):
        raise _invalid(path, f"its manifest names networks {sorted(networks)}, not among {list(NETWORK_ATTRIBUTES)}")
    absent = [name for name in FITTED_ATTRIBUTES + MODES[kind].fitted_attributes
              if name not in fitted and name not in networks]
    if absent:
        raise _invalid(path, f"its manifest lacks the fitted attribute(s) {absent}")
    prefixes = list(networks.values()) + [ARRAY_PREFIX]
    stray = [key for key in tensors if not any(key.startswith(p) for p in prefixes)]
    if stray:
        raise _invalid(path, f"its weights hold tensors the manifest does not name, e.g. {stray[:3]}")
    arrays = {key: t for key, t in tensors.items() if key.startswith(ARRAY_PREFIX)}
    try:
        state = {name: _decode(value, arrays) for name, value in params.items()}
        state.update({name: _decode(value, arrays) for name, value in fitted.items()})
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise _invalid(path, f"its {MANIFEST_NAME} holds a malformed value ({type(exc).__name__}: {exc})") from None
    for name, prefix in networks.items():
        state[name] = {key[len(prefix):]: t for key, t in tensors.items() if key.startswith(prefix)}
    state[VERSIONS_STATE_KEY] = manifest["versions"]
    return state


def load(path):
    """Load a detector from a model file written by :func:`save` (``detector.save``), without unpickling.

    The networks are rebuilt from the saved parameters (never downloading
    pretrained weights: the weights come from the file) and the saved weights
    loaded into them, so predictions are bit-identical to the saved model's.
    A model saved on a GPU loads on a machine without one (on the CPU;
    ``device_`` says where it runs).

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    detector : UFlowDetector or CSFlowDetector
        Fitted, with the parameters it was saved with.

    Raises
    ------
    ModelFileError
        When the file is not a model file (a joblib pickle included: load
        those with ``joblib.load``, only if you trust them), is damaged, or
        describes a detector this skflow_ad cannot build.
    FileNotFoundError
        When ``path`` does not exist.

    Warns
    -----
    ModelVersionWarning
        When the model was saved under another skflow_ad, torch, timm or FrEIA version.
    """
    kind = file_kind(path)
    if kind != "zip":
        raise _not_a_model_file(path, kind)
    with tempfile.TemporaryDirectory(prefix="skflow_ad-load-") as directory:
        try:
            with zipfile.ZipFile(path) as archive:
                manifest = _read_manifest(archive, path)
                classes = _detector_classes()
                if manifest["class"] not in classes:
                    raise _invalid(path, f"it names the class {manifest['class']!r}; this skflow_ad loads "
                                         f"{', '.join(classes)}")
                cls = classes[manifest["class"]]
                weights_path = _extract_checked_weights(archive, manifest, directory, path)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as exc:
            raise _invalid(path, f"the zip archive is damaged ({exc})") from None
        tensors = _read_tensors(weights_path, path)
        state = _state_from_manifest(cls, manifest, tensors, path)
        del tensors
        detector = cls.__new__(cls)
        try:
            detector.__setstate__(state)
        except ModelFileError as exc:
            raise _invalid(path, str(exc).rstrip(".")) from exc.__cause__
    return detector


def load_model(path, *, allow_pickle):
    """Load a detector from a model file or, when allowed, a joblib/pickle file.

    Recognises the format from the file's first bytes. Meant for tools that
    accept both formats (the command line).

    Parameters
    ----------
    path : str or path-like
    allow_pickle : bool
        Load joblib/pickle files too. Unpickling runs the code a file
        contains: allow it only for files from a trusted source.

    Returns
    -------
    detector : BaseFlowDetector
        A fitted detector.

    Raises
    ------
    ModelFileError
        When the file is not a model file (nor, if allowed, a pickle of a
        fitted skflow_ad detector) or is damaged; one sentence says why.
    FileNotFoundError
        When ``path`` does not exist.
    """
    kind = file_kind(path)
    if kind != "pickle":
        return load(path)
    if not allow_pickle:
        raise _not_a_model_file(path, kind)
    import joblib
    from sklearn.utils.validation import check_is_fitted

    from .base import BaseFlowDetector

    try:
        detector = joblib.load(path)
    except ModelFileError as exc:
        raise _invalid(path, str(exc).rstrip(".")) from exc.__cause__
    except Exception as exc:  # a damaged or foreign pickle can fail in any way
        raise ModelFileError(
            f"{str(path)!r} could not be unpickled as a skflow_ad model ({type(exc).__name__}: {exc})."
        ) from exc
    if not isinstance(detector, BaseFlowDetector):
        raise ModelFileError(f"{str(path)!r} holds a {type(detector).__name__}, not a skflow_ad detector.")
    try:
        check_is_fitted(detector, "flow_")
    except Exception:
        raise ModelFileError(
            f"{str(path)!r} holds an unfitted {type(detector).__name__}: fit it before saving."
        ) from None
    return detector
