"""The ``skflow-ad`` command line: fit a detector on image files, then score images.

Two subcommands::

    skflow-ad fit DATA -o model.joblib [options]
    skflow-ad score model.joblib DATA -o OUTDIR [--heatmaps] [--masks] [options]

``fit`` reads the normal images of a folder (or the ``train/good`` split of an
MVTec-AD category), fits a detector and saves it with joblib. ``score`` loads a
saved detector, scores the images of a folder (or the test split of an MVTec-AD
category, which it then evaluates) batch by batch, and writes ``scores.csv``,
optionally heatmap and mask PNGs, and ``metrics.json`` when ground truth is
known.

Exit status: 0 on success, 2 for usage errors, 1 for bad data, paths or models
(reported as one ``error: ...`` line on stderr). Setting the environment
variable ``SKFLOW_AD_TRACEBACK=1`` re-raises errors with their traceback.
"""

from __future__ import annotations

import argparse
import ast
import csv
import importlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
from PIL import Image
from sklearn.utils._param_validation import InvalidParameterError
from tqdm import tqdm

from . import __version__
from ._validation import IMAGES
from .base import BaseFlowDetector
from .datasets import IMAGE_EXTENSIONS, _find_mask, _read_mask, load_images
from .metrics import aupro, best_f1, image_auroc, pixel_auroc
from .trainer import resolve_device
from .uflow import UFlowDetector

PROG = "skflow-ad"

#: ``--detector`` choices: (module, class name), imported only when chosen.
DETECTORS = {
    "uflow": ("skflow_ad.uflow", "UFlowDetector"),
    "csflow": ("skflow_ad.csflow", "CSFlowDetector"),
}

#: Dedicated ``fit`` options and the estimator parameters they set.
FIT_OPTION_PARAMETERS = {
    "backbone": "backbone",
    "image_size": "image_size",
    "epochs": "max_epochs",
    "batch_size": "batch_size",
    "pretrained": "pretrained",
    "device": "device",
    "contamination": "contamination",
    "seed": "random_state",
}

METRIC_NAMES = {
    "image_auroc": "image AUROC",
    "pixel_auroc": "pixel AUROC",
    "aupro": "AUPRO",
    "best_f1": "best F1",
}

# Samples of matplotlib's "inferno" at 9 evenly spaced positions: a perceptually
# ordered colour map, dark for normal and bright for anomalous pixels, without
# depending on matplotlib.
_INFERNO_ANCHORS = np.array(
    [
        (0, 0, 4), (33, 12, 74), (87, 16, 110), (138, 34, 106), (188, 55, 84),
        (228, 90, 49), (249, 142, 9), (249, 203, 53), (252, 255, 164),
    ],
    dtype=np.float64,
)

_UFLOW_DEFAULTS = UFlowDetector().get_params(deep=False)


class CommandError(Exception):
    """Bad data, paths or models: reported as one ``error:`` line, exit status 1."""


class UsageError(Exception):
    """A usage error found after parsing (e.g. an unknown ``--param``): exit status 2."""


# ---------------------------------------------------------------------------
# Argument types
# ---------------------------------------------------------------------------


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _seed(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**32 - 1], got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**32 - 1], got {text!r}")
    return value


def _image_size(text):
    """``"256"`` -> 256 (square), ``"256x320"`` -> (256, 320) as (height, width)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}")
    sides = [_positive_int(part) for part in parts]
    return sides[0] if len(sides) == 1 else tuple(sides)


def _pretrained(text):
    """yes/no (also true/false) -> bool; anything else is a path to local weights."""
    answer = text.lower()
    if answer in ("yes", "true"):
        return True
    if answer in ("no", "false"):
        return False
    return text


def _contamination(text):
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number in (0, 0.5], got {text!r}") from None
    if not 0.0 < value <= 0.5:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number in (0, 0.5], got {text!r}")
    return value


def _literal_or_string(text):
    """A Python literal (number, bool, None, tuple, ...) when ``text`` is one, else ``text`` itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _key_value(text):
    key, separator, value = text.partition("=")
    key = key.strip()
    if not separator or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY a parameter name, got {text!r}")
    return key, _literal_or_string(value.strip())


def _heatmap_range(text):
    if text in ("threshold", "image"):
        return text
    low, separator, high = text.partition(":")
    try:
        bounds = (float(low), float(high))
    except ValueError:
        bounds = None
    if not separator or bounds is None or not bounds[0] < bounds[1]:
        raise argparse.ArgumentTypeError(f"expected 'threshold', 'image' or LOW:HIGH with LOW < HIGH, got {text!r}")
    return bounds


# ---------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, max_help_position=32)


def build_parser():
    """The ``skflow-ad`` argument parser, with the ``fit`` and ``score`` subcommands.

    Returns
    -------
    parser : argparse.ArgumentParser
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Normalizing-flow anomaly detection for images: fit a detector on normal images, "
        "then score new images, write heatmaps and masks, and evaluate on MVTec-AD style folders.",
        epilog=(
            "examples:\n"
            f"  {PROG} fit mvtec/bottle -o bottle.joblib --backbone resnet18 --epochs 20\n"
            f"  {PROG} score bottle.joblib mvtec/bottle -o results --heatmaps --masks\n\n"
            f"Run '{PROG} COMMAND --help' for the options of a command. Exit status: 0 on success, "
            "2 for usage errors, 1 for bad data, paths or models."
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_fit_parser(commands)
    _add_score_parser(commands)
    return parser


def _add_fit_parser(commands):
    defaults = _UFLOW_DEFAULTS
    fit = commands.add_parser(
        "fit",
        help="fit a detector on a folder of normal images and save it",
        description=(
            "Fit an anomaly detector on normal (defect-free) images and save it with joblib.\n\n"
            "Options left out keep the detector's own defaults (shown for uflow). Images are loaded at\n"
            "their native size (they may differ) and resized by the detector to its --image-size."
        ),
        epilog=(
            "examples:\n"
            f"  {PROG} fit train_images/ -o model.joblib --backbone resnet18 --image-size 256\n"
            f"  {PROG} fit mvtec/bottle -o bottle.joblib --epochs 50 --param flow_steps=6 --param learning_rate=5e-4"
        ),
        formatter_class=_HelpFormatter,
    )
    fit.add_argument(
        "data", metavar="DATA",
        help="folder of normal training images, searched recursively (files ending in "
        f"{', '.join(IMAGE_EXTENSIONS)}, any case; hidden files and folders are skipped); "
        "or an MVTec-AD category root (a folder with train/good/), whose train/good/ images are used",
    )
    fit.add_argument("-o", "--output", metavar="MODEL", required=True,
                     help="file to save the fitted detector to (joblib format; missing folders are created)")
    fit.add_argument("--detector", choices=tuple(DETECTORS), default="uflow",
                     help="the method: U-Flow or CS-Flow (default: uflow)")
    fit.add_argument("--backbone", metavar="NAME",
                     help="feature extractor: for uflow mcait, resnet18, wide_resnet50_2 or a timm model name "
                     f"(default: {defaults['backbone']}); for csflow efficientnet_b5 (the authors' weights, "
                     "the default) or tf_efficientnet_b5.TAG for another timm weights tag")
    fit.add_argument("--image-size", type=_image_size, metavar="N|HxW",
                     help="working resolution images are resized to, N for squares or HEIGHTxWIDTH "
                     "(default: the detector's: for uflow 448 with mcait, 256 with other backbones; 768 for csflow)")
    fit.add_argument("--epochs", type=_positive_int, metavar="N",
                     help="maximum number of training epochs; training may stop earlier, see "
                     f"--param n_iter_no_change (default: the detector's, {defaults['max_epochs']} for uflow)")
    fit.add_argument("--batch-size", type=_positive_int, metavar="N",
                     help="training and prediction batch size "
                     f"(default: the detector's, {defaults['batch_size']} for uflow)")
    fit.add_argument("--pretrained", type=_pretrained, metavar="yes|no|PATH",
                     help="backbone weights: yes downloads ImageNet weights, no keeps random weights, "
                     "PATH is a local weights file (a folder for mcait) (default: yes)")
    fit.add_argument("--device", metavar="DEVICE",
                     help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps "
                     f"(default: {defaults['device']}); the model is scored on it too when available")
    fit.add_argument("--contamination", type=_contamination, metavar="auto|FLOAT",
                     help="expected share of anomalies in the training images, in (0, 0.5], setting the "
                     "threshold of the +1/-1 predictions; auto puts it at the lower Tukey fence of the "
                     f"training scores (default: {defaults['contamination']})")
    fit.add_argument("--color", action="store_true",
                     help="read images as RGB (default: convert them to gray)")
    fit.add_argument("--seed", type=_seed, metavar="N",
                     help="random seed, for reproducible fits on the CPU (default: none, not reproducible)")
    fit.add_argument("--param", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                     help="set any other detector parameter (repeatable); VALUE is read as a Python "
                     "literal (3, 1e-4, True, None, (256, 320), 'text') or else taken as a string, "
                     "e.g. --param flow_steps=6 --param mask_method=threshold")
    fit.add_argument("-q", "--quiet", action="store_true",
                     help="no progress bars (default: show them on stderr)")
    fit.set_defaults(handler=_run_fit, command_parser=fit)


def _add_score_parser(commands):
    score = commands.add_parser(
        "score",
        help="score images with a fitted detector; write scores, heatmaps, masks and metrics",
        description=(
            "Score images with a detector saved by 'fit'. Writes OUTDIR/scores.csv with one row per\n"
            "image: path, score (score_samples: higher = more normal), anomaly_score (its negation:\n"
            "higher = more anomalous), prediction (+1 normal, -1 anomalous) and, for an MVTec-AD root,\n"
            "label (+1 for test/good, -1 otherwise).\n\n"
            "For an MVTec-AD root, the test split is scored and evaluated: image AUROC, pixel AUROC,\n"
            "AUPRO and best F1 are printed and written to OUTDIR/metrics.json (pixel metrics need the\n"
            "masks in ground_truth/<defect type>/<name>_mask.png).\n\n"
            "Images are read at their native size, batch by batch; the detector resizes them to its\n"
            "own working size and returns heatmaps and masks at each image's own size. Images are read\n"
            "as RGB or gray to match the images the detector was fitted on."
        ),
        epilog=(
            "examples:\n"
            f"  {PROG} score model.joblib new_images/ -o results --heatmaps\n"
            f"  {PROG} score bottle.joblib mvtec/bottle -o results --masks --mask-method threshold"
        ),
        formatter_class=_HelpFormatter,
    )
    score.add_argument("model", metavar="MODEL", help="a detector file written by 'fit'")
    score.add_argument(
        "data", metavar="DATA",
        help="an image file or a folder of images, searched recursively (hidden files and folders, "
        "and OUTDIR, are skipped); or an MVTec-AD category root (a folder with test/<type>/ subfolders "
        "next to train/ or ground_truth/), whose test split is scored and evaluated",
    )
    score.add_argument("-o", "--output", metavar="OUTDIR", required=True,
                       help="folder for the results (created if missing; existing files are overwritten)")
    score.add_argument("--heatmaps", action="store_true",
                       help="write colour-mapped anomaly maps to OUTDIR/heatmaps/<subfolders>/<stem>.png, "
                       "at the image's size (default: off)")
    score.add_argument("--masks", action="store_true",
                       help="write predicted anomaly masks (255 = anomalous pixel, 0 = normal) to "
                       "OUTDIR/masks/<subfolders>/<stem>.png (default: off)")
    score.add_argument("--mask-method", choices=("nfa", "threshold"),
                       help="nfa: a-contrario test on the latents (no threshold needed); threshold: anomaly "
                       "map above the threshold learned on the training images (default: the detector's "
                       "mask_method, nfa unless set at fit time)")
    score.add_argument("--heatmap-range", type=_heatmap_range, default="threshold",
                       metavar="threshold|image|LOW:HIGH",
                       help="anomaly-map values mapped to the darkest and brightest colours: threshold is "
                       "0 to twice the detector's learned pixel threshold (the same scale for all images, "
                       "the threshold in the middle); image stretches each map from its minimum to its "
                       "maximum; LOW:HIGH a fixed range (default: threshold)")
    score.add_argument("--batch-size", type=_positive_int, metavar="N",
                       help="images read and scored at a time (default: the detector's batch_size)")
    score.add_argument("-q", "--quiet", action="store_true",
                       help="no progress bar (default: show it on stderr)")
    score.set_defaults(handler=_run_score, command_parser=score)


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def main(argv=None):
    """Run the ``skflow-ad`` command line.

    Parameters
    ----------
    argv : list of str, default=None
        The arguments after the program name; None reads ``sys.argv[1:]``.

    Returns
    -------
    status : int
        0 on success, 2 for a usage error, 1 for bad data, paths or models,
        130 when interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help, --version and argparse's usage errors
        code = exit_request.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    try:
        return args.handler(args)
    except Exception as error:
        if os.environ.get("SKFLOW_AD_TRACEBACK"):
            raise
        if isinstance(error, UsageError):
            args.command_parser.print_usage(sys.stderr)
            print(f"{args.command_parser.prog}: error: {error}", file=sys.stderr)
            return 2
        if isinstance(error, (CommandError, OSError, ValueError, TypeError, RuntimeError, ImportError)):
            print(f"error: {_one_line(error)}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def _one_line(error):
    message = " ".join(str(error).split())
    return message or type(error).__name__


# ---------------------------------------------------------------------------
# Images on disk
# ---------------------------------------------------------------------------


def _is_image_file(path):
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def _find_images(folder, *, recursive, exclude=None):
    """Image files in ``folder`` (and its subfolders when ``recursive``), sorted by relative path.

    Hidden files and folders are skipped, and so is the folder ``exclude``
    (resolved), so that results written inside the data are not read back.
    """
    found = []
    for directory, subfolders, files in os.walk(folder):
        directory = Path(directory)
        if recursive:
            subfolders[:] = [
                name for name in subfolders
                if not name.startswith(".") and (exclude is None or (directory / name).resolve() != exclude)
            ]
        else:
            subfolders[:] = []
        found += [directory / name for name in files if _is_image_file(directory / name)]
    return sorted(found, key=lambda path: path.relative_to(folder).parts)


def _read_images(paths, *, color, show_progress=False):
    """Images at their native sizes: one uint8 array when they share a size, else a list of arrays."""
    progress = tqdm(paths, desc="reading", unit="img", disable=not show_progress)
    images = [load_images([path], color=color)[0] for path in progress]
    if len({image.shape for image in images}) == 1:
        return np.stack(images)
    return images


def _describe_extensions():
    return ", ".join(IMAGE_EXTENSIONS)


def _check_folder(path, what):
    if not path.exists():
        raise CommandError(f"{what} {path} does not exist.")
    if not path.is_dir():
        raise CommandError(f"{what} {path} is not a folder.")


# ---------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------


def _detector_class(name):
    module_name, class_name = DETECTORS[name]
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise CommandError(
            f"the {name} detector is not available in this installation of skflow_ad ({_one_line(error)})."
        ) from error


def _fit_parameters(args, detector_class):
    """Detector parameters from the dedicated options and ``--param``; raises UsageError when invalid."""
    valid = sorted(detector_class().get_params(deep=False))
    params = {"verbose": not args.quiet}
    from_options = {}
    for option, name in FIT_OPTION_PARAMETERS.items():
        value = getattr(args, option)
        if value is not None:
            flag = "--" + option.replace("_", "-")
            if name not in valid:
                raise UsageError(
                    f"{flag} does not apply to the {args.detector} detector, which has no {name!r} parameter."
                )
            params[name] = value
            from_options[name] = flag
    from_param = set()
    for name, value in args.param:
        if name not in valid:
            raise UsageError(
                f"unknown parameter {name!r} for --param; the {args.detector} detector's parameters are: "
                f"{', '.join(valid)}."
            )
        if name in from_options:
            raise UsageError(f"{name} is set by both {from_options[name]} and --param; give it once.")
        if name in from_param:
            raise UsageError(f"--param {name} is given more than once.")
        from_param.add(name)
        params[name] = value
    return params


def _make_detector(detector_class, params):
    """The detector, its parameters checked before any data is read."""
    detector = detector_class().set_params(**params)
    try:
        detector._validate_params()
    except InvalidParameterError as error:
        raise UsageError(_one_line(error)) from None
    pretrained = detector.get_params(deep=False).get("pretrained")
    if isinstance(pretrained, (str, os.PathLike)) and not Path(pretrained).exists():
        raise CommandError(f"pretrained weights {pretrained} do not exist.")
    resolve_device(detector.device)  # an unavailable device fails now, not after loading the images
    return detector


def _training_image_paths(data):
    _check_folder(data, "data folder")
    mvtec_train = data / "train" / "good"
    if mvtec_train.is_dir():
        folder, recursive = mvtec_train, False
    else:
        folder, recursive = data, True
    paths = _find_images(folder, recursive=recursive)
    if not paths:
        where = f"{folder} or its subfolders" if recursive else str(folder)
        raise CommandError(f"no image files ({_describe_extensions()}) in {where}.")
    return paths


def _check_model_output(path):
    if path.is_dir():
        raise CommandError(f"output {path} is a folder; give a file name such as {path / 'model.joblib'}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(path.parent, os.W_OK):
        raise CommandError(f"cannot write to folder {path.parent}.")


def _save_model(detector, path):
    # Written next to the target then renamed, so an interrupted save never
    # leaves a truncated model behind (nor destroys an older one).
    partial = path.with_name(path.name + ".partial")
    try:
        joblib.dump(detector, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _run_fit(args):
    detector_class = _detector_class(args.detector)
    detector = _make_detector(detector_class, _fit_parameters(args, detector_class))
    paths = _training_image_paths(Path(args.data))
    output = Path(args.output)
    _check_model_output(output)
    detector.fit(_read_images(paths, color=args.color, show_progress=not args.quiet))
    _save_model(detector, output)
    height, width = detector.image_size_
    epochs = f"{detector.n_iter_} epoch{'' if detector.n_iter_ == 1 else 's'}"
    print(
        f"fitted {type(detector).__name__} on {len(paths)} images ({epochs}, working size "
        f"{height}x{width}); saved to {output}"
    )
    return 0


# ---------------------------------------------------------------------------
# score
# ---------------------------------------------------------------------------


@dataclass
class ScoringSet:
    """Images to score, with their ground truth when the folder holds it.

    Attributes
    ----------
    paths : list of Path
    base : Path
        Output names mirror the image paths relative to this folder.
    labels : ndarray of shape (n,) or None
        +1 normal, -1 anomalous, for an MVTec-AD test split.
    mask_paths : list of (Path or None) or None
        The ground-truth mask of each anomalous image, for an MVTec-AD test split.
    """

    paths: list
    base: Path
    labels: np.ndarray | None = None
    mask_paths: list | None = None


def _is_mvtec_root(data):
    test = data / "test"
    if not test.is_dir() or not ((data / "train").is_dir() or (data / "ground_truth").is_dir()):
        return False
    return any(child.is_dir() and not child.name.startswith(".") for child in test.iterdir())


def _mvtec_test_split(data, exclude):
    """The test images, ``test/good`` first then the other folders alphabetically, as in load_mvtec_folder."""
    test = data / "test"
    folders = sorted(
        (
            child for child in test.iterdir()
            if child.is_dir() and not child.name.startswith(".") and child.resolve() != exclude
        ),
        key=lambda folder: (folder.name != "good", folder.name),
    )
    paths, defect_types = [], []
    for folder in folders:
        found = _find_images(folder, recursive=False)
        paths += found
        defect_types += [folder.name] * len(found)
    if not paths:
        raise CommandError(f"no image files ({_describe_extensions()}) in the subfolders of {test}.")
    ground_truth = data / "ground_truth"
    mask_paths = [
        None if defect_type == "good" else _find_mask(ground_truth, defect_type, path)
        for path, defect_type in zip(paths, defect_types)
    ]
    labels = np.where(np.asarray(defect_types) == "good", 1, -1)
    return ScoringSet(paths, test, labels, mask_paths)


def _scoring_set(data, exclude):
    if data.is_file():
        if not _is_image_file(data):
            raise CommandError(f"{data} is not an image file ({_describe_extensions()}).")
        return ScoringSet([data], data.parent)
    _check_folder(data, "data folder")
    if _is_mvtec_root(data):
        return _mvtec_test_split(data, exclude)
    paths = _find_images(data, recursive=True, exclude=exclude)
    if not paths:
        raise CommandError(f"no image files ({_describe_extensions()}) in {data} or its subfolders.")
    return ScoringSet(paths, data)


def _load_model(path):
    if not path.is_file():
        raise CommandError(f"model file {path} does not exist." if not path.exists() else f"{path} is not a file.")
    try:
        model = joblib.load(path)
    except Exception as error:  # unpickling arbitrary bytes can fail in any way
        raise CommandError(f"cannot load a model from {path}: {_one_line(error)}") from error
    if not isinstance(model, BaseFlowDetector):
        raise CommandError(f"{path} holds a {type(model).__name__}, not a skflow_ad detector.")
    if not hasattr(model, "flow_"):
        raise CommandError(f"the detector in {path} is not fitted; fit it with '{PROG} fit' first.")
    if model.input_kind_ != IMAGES:
        raise CommandError(f"the detector in {path} was fitted on feature vectors, not images.")
    return model


def _output_names(paths, base):
    """``<subfolders>/<stem>.png`` per image; the extension is kept in the name only to avoid a clash."""
    relative = [path.relative_to(base) for path in paths]
    names = [path.with_suffix(".png") for path in relative]
    counts = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return [
        name if counts[name] == 1 else path.with_name(f"{path.stem}_{path.suffix.lstrip('.').lower()}.png")
        for name, path in zip(names, relative)
    ]


def colorize(anomaly_map, low, high):
    """Map values to RGB colours of the "inferno" colour map, ``low`` darkest and ``high`` brightest.

    Parameters
    ----------
    anomaly_map : ndarray of shape (H, W)
    low, high : float
        Values at the ends of the colour map; values outside are clipped.

    Returns
    -------
    rgb : ndarray of shape (H, W, 3), uint8
    """
    span = high - low
    position = np.clip((anomaly_map - low) / span, 0.0, 1.0) if span > 0 else np.zeros(anomaly_map.shape)
    position = np.nan_to_num(position, nan=0.0)
    anchors = np.linspace(0.0, 1.0, len(_INFERNO_ANCHORS))
    rgb = np.stack([np.interp(position, anchors, _INFERNO_ANCHORS[:, c]) for c in range(3)], axis=-1)
    return np.rint(rgb).astype(np.uint8)


def _heatmap_bounds(heatmap_range, model):
    """Fixed ``(low, high)`` colour range, or None to stretch each map on its own."""
    if heatmap_range == "image":
        return None
    if heatmap_range == "threshold":
        threshold = float(getattr(model, "pixel_threshold_", np.nan))
        return (0.0, 2.0 * threshold) if np.isfinite(threshold) and threshold > 0 else None
    return heatmap_range


def _write_png(array, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _pixel_evaluation_problem(dataset):
    """Why the pixel metrics cannot be computed on ``dataset``, or None when they can."""
    anomalous = dataset.labels == -1
    if not anomalous.any():
        return "pixel metrics need anomalous test images"
    missing = [path for path, is_anomalous, mask in zip(dataset.paths, anomalous, dataset.mask_paths)
               if is_anomalous and mask is None]
    if missing:
        return (f"pixel metrics need a mask in ground_truth/<defect type>/ for every anomalous test image; "
                f"{len(missing)} have none (e.g. {missing[0]})")
    return None


def _evaluate(labels, anomaly_scores, ground_truth, maps):
    """The metrics that the ground truth allows (None for the others), and why the others were skipped.

    ``ground_truth`` and ``maps`` are lists of per-image masks and anomaly
    maps, or None when the pixel metrics cannot be computed.
    """
    metrics = dict.fromkeys([*METRIC_NAMES, "best_f1_threshold"])
    notes = []
    if len(set(labels.tolist())) == 2:
        metrics["image_auroc"] = image_auroc(labels, anomaly_scores)
        metrics["best_f1"], metrics["best_f1_threshold"] = best_f1(labels, anomaly_scores)
    else:
        notes.append("image metrics need both normal (test/good) and anomalous test images")
    if ground_truth is not None:
        if any(mask.any() for mask in ground_truth):
            metrics["pixel_auroc"] = pixel_auroc(ground_truth, maps)
            metrics["aupro"] = aupro(ground_truth, maps)
        else:
            notes.append("pixel metrics need at least one anomalous pixel in the ground-truth masks")
    metrics = {key: None if value is None else float(value) for key, value in metrics.items()}
    metrics["n_images"] = int(len(labels))
    metrics["n_anomalous"] = int((labels == -1).sum())
    return metrics, notes


def _run_score(args):
    model = _load_model(Path(args.model))
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise CommandError(f"output {output} exists and is not a folder.")
    dataset = _scoring_set(Path(args.data), exclude=output.resolve())
    pixel_problem = None if dataset.labels is None else _pixel_evaluation_problem(dataset)
    evaluate_pixels = dataset.labels is not None and pixel_problem is None
    output.mkdir(parents=True, exist_ok=True)

    if args.batch_size is not None:
        model.set_params(batch_size=args.batch_size)
    batch_size = model.batch_size
    color = model.n_channels_ == 3
    names = _output_names(dataset.paths, dataset.base)
    bounds = _heatmap_bounds(args.heatmap_range, model)
    scores, kept_maps, ground_truth = [], [], []

    with tqdm(total=len(dataset.paths), desc="scoring", unit="img", disable=args.quiet) as progress:
        for start in range(0, len(dataset.paths), batch_size):
            batch = slice(start, start + batch_size)
            images = _read_images(dataset.paths[batch], color=color)
            if args.heatmaps or evaluate_pixels:
                batch_scores, maps = model.score_samples_and_anomaly_map(images)  # one pass for both
            else:
                batch_scores, maps = model.score_samples(images), None
            scores.append(batch_scores)
            masks = model.predict_mask(images, method=args.mask_method) if args.masks else None
            for offset, name in enumerate(names[batch]):
                index = start + offset
                if args.heatmaps:
                    anomaly_map = maps[offset]
                    low, high = bounds if bounds is not None else (anomaly_map.min(), anomaly_map.max())
                    _write_png(colorize(anomaly_map, low, high), output / "heatmaps" / name)
                if masks is not None:
                    _write_png(np.asarray(masks[offset], dtype=np.uint8) * 255, output / "masks" / name)
                if evaluate_pixels:
                    kept_maps.append(maps[offset])
                    ground_truth.append(_ground_truth_mask(dataset, index, maps[offset].shape))
            progress.update(len(names[batch]))

    scores = np.concatenate(scores)
    # predict() is the sign of decision_function = score_samples - offset_; computing
    # it here saves another pass of the images through the network.
    predictions = np.where(scores - model.offset_ < 0, -1, 1)
    _write_scores(output / "scores.csv", dataset, scores, predictions)
    print(f"scored {len(scores)} images, {int((predictions == -1).sum())} predicted anomalous; "
          f"wrote {output / 'scores.csv'}")
    if args.heatmaps:
        print(f"heatmaps in {output / 'heatmaps'}")
    if args.masks:
        print(f"masks in {output / 'masks'}")

    if dataset.labels is not None:
        metrics, notes = _evaluate(
            dataset.labels, -scores, ground_truth if evaluate_pixels else None, kept_maps if evaluate_pixels else None
        )
        for note in ([pixel_problem] if pixel_problem else []) + notes:
            print(f"note: {note}; skipped.", file=sys.stderr)
        if any(metrics[key] is not None for key in METRIC_NAMES):
            for key, title in METRIC_NAMES.items():
                value = metrics[key]
                print(f"{title:<12} {'n/a' if value is None else f'{value:.4f}'}")
            with open(output / "metrics.json", "w") as handle:
                json.dump(metrics, handle, indent=2)
            print(f"wrote {output / 'metrics.json'}")
    return 0


def _ground_truth_mask(dataset, index, shape):
    mask_path = dataset.mask_paths[index]
    if mask_path is None:
        return np.zeros(shape, dtype=bool)
    mask = _read_mask(mask_path)
    if mask.shape != shape:
        raise CommandError(
            f"mask {mask_path} is {mask.shape[0]}x{mask.shape[1]} but its image {dataset.paths[index]} is "
            f"{shape[0]}x{shape[1]} (height x width)."
        )
    return mask


def _write_scores(path, dataset, scores, predictions):
    header = ["path", "score", "anomaly_score", "prediction"]
    if dataset.labels is not None:
        header.append("label")
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for index, (image_path, score, prediction) in enumerate(zip(dataset.paths, scores, predictions)):
            row = [str(image_path), repr(float(score)), repr(float(-score)), int(prediction)]
            if dataset.labels is not None:
                row.append(int(dataset.labels[index]))
            writer.writerow(row)


if __name__ == "__main__":
    raise SystemExit(main())
