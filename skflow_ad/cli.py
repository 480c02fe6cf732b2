"""The ``skflow-ad`` command line: fit a detector on image files, then score images.

Three subcommands::

    skflow-ad fit DATA -o model.skad [options]
    skflow-ad score model.skad DATA -o OUTDIR [--heatmaps] [--masks] [options]
    skflow-ad export model.skad -o model.onnx [--format onnx|openvino] [--precision FP32|FP16]

``fit`` reads the normal images of a folder (or the ``train/good`` split of an
MVTec-AD category), fits a detector and saves it: as a model file
(:func:`skflow_ad.load`, nothing unpickled) unless the output name ends in
``.joblib``, ``.pkl`` or ``.pickle``. ``score`` loads a saved detector (a
joblib/pickle file only with ``--allow-pickle``, since unpickling runs the
code a file contains), scores the images of a folder (or the test split of an MVTec-AD
category, which it then evaluates) batch by batch, and writes ``scores.csv``,
optionally heatmap and mask PNGs with ``regions.csv`` (the connected defect
regions of the masks), and ``metrics.json`` when ground truth is known; one
pass of the network per batch gives all of them.

Exit status: 0 on success, 2 for usage errors, 1 for bad data, paths or models
(reported as one ``error: ...`` line on stderr), 3 when ``score`` could not
read some images (``EXIT_SOME_IMAGES_FAILED``): each is reported on stderr as
``skipped PATH: REASON``, every other image is scored and written, and the
unreadable ones get a row in ``scores.csv`` with empty scores and the reason in
its ``error`` column. ``score`` also takes a model exported by ``export`` (a
``.onnx`` or OpenVINO ``.xml`` file), run by
:class:`skflow_ad.deploy.ExportedDetector`. Setting the environment variable ``SKFLOW_AD_TRACEBACK=1``
re-raises errors with their traceback.

Offline, ``fit`` with ``--pretrained yes`` (the default) first checks in a few
seconds whether the Hugging Face Hub answers; when it does not, downloads are
switched off for the run (weights already in the local cache still load), so a
missing download fails at once, naming ``--pretrained no`` and ``--pretrained
PATH``, instead of after a minute of retries.
"""

from __future__ import annotations

import argparse
import ast
import collections
import contextlib
import csv
import importlib
import json
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
from PIL import Image
from sklearn.utils._param_validation import InvalidParameterError
from tqdm import tqdm

from . import __version__
from ._validation import IMAGES
from .datasets.files import IMAGE_EXTENSIONS, find_image_files, is_image_file, read_image, stack_images
from .datasets.mvtec import find_mvtec_files, is_mvtec_root, read_mask
from .conventions import labels_from_decision
from .deploy import OPENVINO_PRECISIONS, RUNTIMES, ExportedDetector
from .extras import install_command
from .metrics import aupro, best_f1, image_auroc, pixel_auroc
from .persistence import ModelFileError, atomic_destination, file_kind, load_model
from .prediction import MASK_METHODS
from .regions import RECORD_FIELDS, regions_to_records
from .plotting import colorize

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

#: The Hugging Face Hub, where timm downloads pretrained weights (``HF_ENDPOINT`` overrides it).
HUB_ENDPOINT = "https://huggingface.co"
#: Seconds the Hub has to answer before ``fit`` takes it as unreachable.
HUB_PROBE_TIMEOUT = 5.0

#: Model files ``score`` runs as exported models.
EXPORTED_SUFFIXES = (".onnx", ".xml")
#: ``export --format`` choices.
EXPORT_FORMATS = ("onnx", "openvino")

#: Exit status of ``score`` when some images could not be read (the others are scored).
EXIT_SOME_IMAGES_FAILED = 3

#: What ``fit --help`` says of a default it cannot read (torch, and so the detectors, not installed).
UNKNOWN_DEFAULT = "the detector's"


def _torch_module(name, purpose, extras="torch"):
    """The torch-based submodule ``skflow_ad.<name>``; without torch a CommandError saying how to install it."""
    try:
        return importlib.import_module(f".{name}", __package__)
    except ImportError as error:
        raise CommandError(f"{purpose} needs torch ({_one_line(error)}): {install_command(extras)}.") from error


def _uflow_defaults():
    """U-Flow's default parameters for ``fit --help``; placeholders where torch is not installed."""
    try:
        from .uflow import UFlowDetector
    except ImportError:  # a deployment install: score and export of exported models still work
        return collections.defaultdict(lambda: UNKNOWN_DEFAULT)
    return UFlowDetector().get_params(deep=False)


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
            f"  {PROG} fit mvtec/bottle -o bottle.skad --backbone resnet18 --epochs 20\n"
            f"  {PROG} score bottle.skad mvtec/bottle -o results --heatmaps --masks\n"
            f"  {PROG} export bottle.skad -o bottle.onnx\n\n"
            f"Run '{PROG} COMMAND --help' for the options of a command. Exit status: 0 on success, "
            "2 for usage errors, 1 for bad data, paths or models, 3 when score could not read some "
            "images (the others are scored and written)."
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_fit_parser(commands)
    _add_score_parser(commands)
    _add_export_parser(commands)
    return parser


def _add_fit_parser(commands):
    defaults = _uflow_defaults()
    fit = commands.add_parser(
        "fit",
        help="fit a detector on a folder of normal images and save it",
        description=(
            "Fit an anomaly detector on normal (defect-free) images and save it to a model file.\n\n"
            "Options left out keep the detector's own defaults (shown for uflow). Images are loaded at\n"
            "their native size (they may differ) and resized by the detector to its --image-size."
        ),
        epilog=(
            "examples:\n"
            f"  {PROG} fit train_images/ -o model.skad --backbone resnet18 --image-size 256\n"
            f"  {PROG} fit mvtec/bottle -o bottle.skad --epochs 50 --param flow_steps=6 --param learning_rate=5e-4"
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
                     help="file to save the fitted detector to, missing folders created: a model file (weights as "
                     "safetensors and a JSON manifest, loaded without unpickling; suffix .skad by convention), "
                     "or a joblib pickle when the name ends in .joblib, .pkl or .pickle")
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
            "higher = more anomalous), prediction (+1 normal, -1 anomalous), for an MVTec-AD root\n"
            "label (+1 for test/good, -1 otherwise), and error: empty, or why the image could not be\n"
            "read (a corrupt or unsupported file), its score, anomaly_score and prediction then empty.\n"
            "Unreadable images are reported on stderr and skipped; the others are scored, and the exit\n"
            f"status is then {EXIT_SOME_IMAGES_FAILED}. Metrics use the images that could be read.\n\n"
            "For an MVTec-AD root, the test split is scored and evaluated: image AUROC, pixel AUROC,\n"
            "AUPRO and best F1 are printed and written to OUTDIR/metrics.json (pixel metrics need the\n"
            "masks in ground_truth/<defect type>/<name>_mask.png).\n\n"
            "With --masks, OUTDIR/regions.csv lists the connected defect regions of every mask, the\n"
            "unit of an inspection decision (see --masks below).\n\n"
            "Images are read at their native size, batch by batch; the detector resizes them to its\n"
            "own working size and returns heatmaps and masks at each image's own size. Images are read\n"
            "as RGB or gray to match the images the detector was fitted on; 8-bit files as uint8,\n"
            "16-bit (and 32-bit integer) files as uint16, 32-bit float TIFFs as floats in [0, 1]."
        ),
        epilog=(
            "examples:\n"
            f"  {PROG} score model.skad new_images/ -o results --heatmaps\n"
            f"  {PROG} score old_model.joblib new_images/ -o results --allow-pickle\n"
            f"  {PROG} score model.onnx new_images/ -o results --heatmaps\n"
            f"  {PROG} score bottle.skad mvtec/bottle -o results --masks --mask-method threshold"
        ),
        formatter_class=_HelpFormatter,
    )
    score.add_argument("model", metavar="MODEL",
                       help="a detector file written by 'fit' or by detector.save(); a joblib/pickle file only "
                       "with --allow-pickle; or a model written by 'export' (.onnx, or OpenVINO .xml), run "
                       "without torch by skflow_ad.deploy.ExportedDetector")
    score.add_argument("--runtime", choices=tuple(RUNTIMES),
                       help="runtime of an exported model (default: openvino for .xml, onnxruntime for .onnx)")
    score.add_argument("--allow-pickle", action="store_true",
                       help="also load joblib/pickle model files. Unpickling runs the code the file contains: "
                       "pass it only for files from a trusted source (default: refuse pickles)")
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
                       "OUTDIR/masks/<subfolders>/<stem>.png and their connected defect regions to "
                       "OUTDIR/regions.csv: one row per region with its image, rank (most severe first), area "
                       "in pixels, bounding box (row0, col0, row1, col1; half-open), centroid, maximum and mean "
                       "anomaly-map value, and log10 NFA (NFA methods) or margin over the pixel threshold "
                       "(threshold method) (default: off)")
    score.add_argument("--mask-method", choices=MASK_METHODS,
                       help="tree_nfa: a-contrario test on the level sets of the latent energy (U-Flow's current "
                       "paper); block_nfa: a-contrario test on windows of the latents (its first version); "
                       "threshold: anomaly map above the threshold learned on the training images (default: "
                       "the detector's mask_method, tree_nfa unless set at fit time)")
    score.add_argument("--min-region-area", type=_positive_int, metavar="N",
                       help="drop mask regions smaller than N pixels (default: the detector's min_region_area, 1)")
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


def _add_export_parser(commands):
    export = commands.add_parser(
        "export",
        help="export a fitted detector as an ONNX model or OpenVINO IR, to score without torch",
        description=(
            "Export the whole prediction network of a detector saved by 'fit' (uint8 images at its working\n"
            "size in; scores, anomaly maps and the latent statistics of the NFA masks out; thresholds and\n"
            "prediction parameters in the metadata) for skflow_ad.deploy.ExportedDetector and\n"
            f"'{PROG} score'. An exported .onnx MODEL is converted to OpenVINO IR. Needs the packages onnx\n"
            "and onnxscript (and openvino for --format openvino): pip install \"skflow-ad[export]\"."
        ),
        epilog=(
            "examples:\n"
            f"  {PROG} export model.skad -o model.onnx\n"
            f"  {PROG} export model.skad -o model.onnx --graph-runtime openvino\n"
            f"  {PROG} export model.skad -o model.onnx --block-nfa-map\n"
            f"  {PROG} export model.skad -o model.xml --precision FP16\n"
            f"  {PROG} export model.skad -o model.xml --precision INT8 --calibration train_images/\n"
            f"  {PROG} export model.onnx -o model.xml"
        ),
        formatter_class=_HelpFormatter,
    )
    export.add_argument("model", metavar="MODEL",
                        help="a detector file written by 'fit' or by detector.save() (a joblib/pickle file only with "
                        "--allow-pickle), or a .onnx file written by 'export' to convert to OpenVINO IR")
    export.add_argument("-o", "--output", metavar="FILE", required=True,
                        help="the exported model: .onnx, or .xml for OpenVINO IR (weights in the .bin beside it)")
    export.add_argument("--format", choices=EXPORT_FORMATS,
                        help="onnx or openvino (default: openvino for an .xml output, else onnx)")
    export.add_argument("--precision", choices=OPENVINO_PRECISIONS, default="FP32",
                        help="OpenVINO IR precision: FP32 (the detector's numbers), FP16 (weights stored in 16 bits, "
                        "computed in FP32) or INT8 (the feature extractor quantized by NNCF on --calibration "
                        "images: faster, not the same numbers; check it on your data) (default: FP32)")
    export.add_argument("--graph-runtime", choices=tuple(RUNTIMES),
                        help="for an ONNX output: the runtime the graph is laid out for (CS-Flow sums its "
                        "up-convolutions in the form that runtime runs faster; same numbers, either graph runs on "
                        "either runtime; OpenVINO IR is always laid out for OpenVINO) (default: onnxruntime)")
    export.add_argument("--block-nfa-map", action="store_true",
                        help="from a detector file: also output 'block_log_nfa', the block-NFA log10 NFA map at the "
                        "working size with the model's NFA parameters, for programs that run the graph without "
                        "skflow_ad (below nfa_log_epsilon = anomalous) (default: off)")
    export.add_argument("--calibration", metavar="DATA",
                        help="for --precision INT8: a folder of normal images (searched recursively), or an "
                        "MVTec-AD category root whose train/good/ images are used (default: none; required by INT8)")
    export.add_argument("--allow-pickle", action="store_true",
                        help="also load joblib/pickle model files; unpickling runs the code the file contains: pass it "
                        "only for files from a trusted source (default: refuse pickles)")
    export.set_defaults(handler=_run_export, command_parser=export)


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


def _read_images(paths, *, color, show_progress=False):
    """Images at their native sizes: one array when they share a size, else a list of arrays."""
    progress = tqdm(paths, desc="reading", unit="img", disable=not show_progress)
    return stack_images([read_image(path, color=color) for path in progress])


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
    _torch_module("trainer", "fit").resolve_device(detector.device)  # an unavailable device fails now, not after loading the images
    return detector


def _training_image_paths(data):
    _check_folder(data, "data folder")
    if (data / "train" / "good").is_dir():
        return find_mvtec_files(data, split="train").train_paths
    paths = find_image_files(data, recursive=True)
    if not paths:
        raise CommandError(f"no image files ({_describe_extensions()}) in {data} or its subfolders.")
    return paths


def _check_model_output(path):
    if path.is_dir():
        raise CommandError(f"output {path} is a folder; give a file name such as {path / 'model.skad'}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(path.parent, os.W_OK):
        raise CommandError(f"cannot write to folder {path.parent}.")


PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")


def _save_model(detector, path):
    if path.suffix.lower() not in PICKLE_SUFFIXES:
        detector.save(path)  # atomic: an interrupted save leaves an older file intact
        return
    with atomic_destination(path) as temporary:
        joblib.dump(detector, temporary)


def _run_fit(args):
    features = _torch_module("features", "fit")
    detector_class = _detector_class(args.detector)
    detector = _make_detector(detector_class, _fit_parameters(args, detector_class))
    paths = _training_image_paths(Path(args.data))
    output = Path(args.output)
    _check_model_output(output)
    downloads = detector.get_params(deep=False).get("pretrained") is True
    hub = os.environ.get("HF_ENDPOINT", HUB_ENDPOINT)
    offline = downloads and not _hub_offline_requested() and not _reachable(hub)
    if offline:
        print(f"note: {hub} does not answer; pretrained weights come from the local cache only.", file=sys.stderr)
    images = _read_images(paths, color=args.color, show_progress=not args.quiet)
    try:
        with _hub_downloads_off() if offline else contextlib.nullcontext():
            detector.fit(images)
    except features.PretrainedWeightsError as error:
        if offline:
            where = f"{hub} does not answer and they are not in the local cache"
        else:
            where = _one_line(error.__cause__ or error)
        raise CommandError(
            f"cannot get the pretrained weights of the backbone ({where}). Pass --pretrained no for random "
            f"weights (much weaker features), or --pretrained PATH with a weights file saved on a connected "
            f"machine (see 'Pretrained weights offline' in the user guide)."
        ) from error
    _save_model(detector, output)
    height, width = detector.image_size_
    epochs = f"{detector.n_iter_} epoch{'' if detector.n_iter_ == 1 else 's'}"
    print(
        f"fitted {type(detector).__name__} on {len(paths)} images ({epochs}, working size "
        f"{height}x{width}); saved to {output}"
    )
    return 0


def _is_true(text):
    return (text or "").strip().lower() in ("1", "on", "yes", "true")


def _hub_offline_requested():
    return _is_true(os.environ.get("HF_HUB_OFFLINE"))


def _reachable(url, timeout=HUB_PROBE_TIMEOUT):
    """Whether ``url``'s server answers an HTTP request within ``timeout`` seconds (any status counts).

    Goes through the proxies of the environment, as downloads do.
    """
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except urllib.error.HTTPError:  # an answer, even an error status, means the server is there
        return True
    except (OSError, ValueError):  # URLError, timeouts, refused connections, malformed URLs
        return False


@contextlib.contextmanager
def _hub_downloads_off():
    """Hugging Face Hub offline mode for the block: cached files load, missing ones fail at once.

    The mode is read from ``HF_HUB_OFFLINE`` when huggingface_hub is imported,
    and from its ``constants`` module at each call once it is.
    """
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    previous_constant = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous
        constants = sys.modules.get("huggingface_hub.constants")  # possibly imported inside the block
        if constants is not None:
            constants.HF_HUB_OFFLINE = previous_constant if previous_constant is not None else _is_true(previous)


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


def _scoring_set(data, exclude):
    if data.is_file():
        if not is_image_file(data):
            raise CommandError(f"{data} is not an image file ({_describe_extensions()}).")
        return ScoringSet([data], data.parent)
    _check_folder(data, "data folder")
    if is_mvtec_root(data):
        files = find_mvtec_files(data, split="test", exclude=exclude)
        return ScoringSet(files.test_paths, data / "test", files.y_test, files.mask_paths)
    paths = find_image_files(data, recursive=True, exclude=exclude)
    if not paths:
        raise CommandError(f"no image files ({_describe_extensions()}) in {data} or its subfolders.")
    return ScoringSet(paths, data)


def _load_model(path, allow_pickle, runtime=None):
    if not path.is_file():
        raise CommandError(f"model file {path} does not exist." if not path.exists() else f"{path} is not a file.")
    if path.suffix.lower() in EXPORTED_SUFFIXES:
        runtime = runtime or ("openvino" if path.suffix.lower() == ".xml" else "onnxruntime")
        try:
            return ExportedDetector(path, runtime)
        except ModelFileError as error:
            raise CommandError(_one_line(error)) from error
    if not allow_pickle and file_kind(path) == "pickle":
        raise CommandError(
            f"{path} is a joblib/pickle file; loading it runs the code it contains. Pass --allow-pickle if it comes "
            f"from a trusted source, or re-save the model with detector.save(...) (a file that is never unpickled)."
        )
    try:
        model = load_model(path, allow_pickle=allow_pickle)
    except ModelFileError as error:
        raise CommandError(_one_line(error)) from error
    except ImportError as error:  # a detector file needs torch; an exported model does not
        raise CommandError(
            f"{path} is a detector file, which needs torch ({_one_line(error)}): {install_command('torch')}, "
            f"or export it on a machine with torch ('{PROG} export MODEL -o model.onnx') and score the .onnx file."
        ) from error
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


def _calibration_paths(args):
    """The ``--calibration`` image paths (read by the export in the model's colour mode), or None."""
    if (args.calibration is None) != (args.precision != "INT8"):
        raise UsageError("--calibration DATA goes with --precision INT8, and only with it.")
    return None if args.calibration is None else _training_image_paths(Path(args.calibration))


def _run_export(args):
    source, output = Path(args.model), Path(args.output)
    fmt = args.format or ("openvino" if output.suffix.lower() == ".xml" else "onnx")
    if source.suffix.lower() == ".xml":
        raise CommandError(f"{source} is already an exported OpenVINO model; export a detector file (.skad).")
    if args.graph_runtime is not None and (fmt != "onnx" or source.suffix.lower() == ".onnx"):
        raise UsageError("--graph-runtime goes with an ONNX output exported from a detector file; OpenVINO IR "
                         "written by 'export' is laid out for OpenVINO.")
    if source.suffix.lower() == ".onnx" and source.is_file():
        if args.block_nfa_map:
            raise UsageError("--block-nfa-map goes with a detector file: the outputs of an exported ONNX model are "
                             "fixed; export the detector again with --block-nfa-map.")
        if fmt != "openvino":
            raise UsageError(f"{source} is already an ONNX model; export converts it to OpenVINO IR only "
                             f"(-o MODEL.xml).")
        export = _torch_module("export", "export", "torch,export")
        written = export.onnx_to_openvino(source, output, precision=args.precision,
                                          calibration_images=_calibration_paths(args))
    else:
        model = _load_model(source, args.allow_pickle)
        if fmt == "openvino":
            written = model.export_openvino(output, precision=args.precision,
                                            calibration_images=_calibration_paths(args),
                                            block_nfa_map=args.block_nfa_map)
        else:
            if output.suffix.lower() == ".xml":
                raise UsageError("an ONNX model cannot be written to an .xml file; use -o MODEL.onnx or "
                                 "--format openvino.")
            written = model.export_onnx(output, runtime=args.graph_runtime or "onnxruntime",
                                        block_nfa_map=args.block_nfa_map)
    print(f"wrote {written}" + (f" and {written.with_suffix('.bin')}" if fmt == "openvino" else ""))
    return 0


def _run_score(args):
    model = _load_model(Path(args.model), args.allow_pickle, args.runtime)
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise CommandError(f"output {output} exists and is not a folder.")
    dataset = _scoring_set(Path(args.data), exclude=output.resolve())
    pixel_problem = None if dataset.labels is None else _pixel_evaluation_problem(dataset)
    evaluate_pixels = dataset.labels is not None and pixel_problem is None
    output.mkdir(parents=True, exist_ok=True)

    # Attributes, not set_params: exported models are no estimators; both check them when predicting.
    if args.batch_size is not None:
        model.batch_size = args.batch_size
    batch_size = model.batch_size
    color = model.n_channels_ == 3
    names = _output_names(dataset.paths, dataset.base)
    bounds = _heatmap_bounds(args.heatmap_range, model)
    n_images = len(dataset.paths)
    scores = np.full(n_images, np.nan)
    errors = {}  # image index -> why it could not be scored
    kept_maps, ground_truth, evaluated = [], [], []

    if args.min_region_area is not None:
        model.min_region_area = args.min_region_area
    region_records = []
    with tqdm(total=n_images, desc="scoring", unit="img", disable=args.quiet) as progress:
        for start in range(0, n_images, batch_size):
            batch = range(start, min(start + batch_size, n_images))
            kept, images = _read_batch(dataset.paths, batch, color, errors, progress)
            progress.update(len(batch))
            if not kept:
                continue
            images = stack_images(images)
            masks = regions = None
            # One pass of the network for everything asked for.
            if args.masks:
                result = model.inspect(images, method=args.mask_method)
                batch_scores, maps, masks, regions = result.scores, result.anomaly_maps, result.masks, result.regions
            elif args.heatmaps or evaluate_pixels:
                batch_scores, maps = model.score_samples_and_anomaly_map(images)
            else:
                batch_scores, maps = model.score_samples(images), None
            scores[kept] = batch_scores
            for offset, index in enumerate(kept):
                name = names[index]
                if args.heatmaps:
                    anomaly_map = maps[offset]
                    low, high = bounds if bounds is not None else (anomaly_map.min(), anomaly_map.max())
                    _write_png(colorize(anomaly_map, low, high), output / "heatmaps" / name)
                if masks is not None:
                    _write_png(np.asarray(masks[offset], dtype=np.uint8) * 255, output / "masks" / name)
                    region_records += regions_to_records([regions[offset]], [str(dataset.paths[index])])
                if evaluate_pixels:
                    kept_maps.append(maps[offset])
                    ground_truth.append(_ground_truth_mask(dataset, index, maps[offset].shape))
            evaluated += kept

    scored = np.isfinite(scores)
    # predict()'s labels from the scores already computed: no second pass of the network.
    predictions = labels_from_decision(scores - model.offset_)
    _write_scores(output / "scores.csv", dataset, scores, predictions, errors)
    print(f"scored {int(scored.sum())} images, {int((predictions[scored] == -1).sum())} predicted anomalous; "
          f"wrote {output / 'scores.csv'}")
    if args.heatmaps:
        print(f"heatmaps in {output / 'heatmaps'}")
    if args.masks:
        _write_regions(output / "regions.csv", region_records)
        print(f"masks in {output / 'masks'}; {len(region_records)} defect regions in {output / 'regions.csv'}")

    if dataset.labels is not None and evaluated:
        if errors:
            print(f"note: metrics computed on the {len(evaluated)} images that could be read, of {n_images}.",
                  file=sys.stderr)
        labels = dataset.labels[evaluated]
        metrics, notes = _evaluate(
            labels, -scores[evaluated], ground_truth if evaluate_pixels else None,
            kept_maps if evaluate_pixels else None,
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
    if errors:
        print(f"error: {len(errors)} of {n_images} images could not be scored; their rows in "
              f"{output / 'scores.csv'} have an empty score and the reason in the error column.", file=sys.stderr)
        return EXIT_SOME_IMAGES_FAILED
    return 0


def _write_regions(path, records):
    """``regions.csv``: one row per defect region (:data:`skflow_ad.regions.RECORD_FIELDS`)."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=RECORD_FIELDS)
        writer.writeheader()
        for record in records:
            writer.writerow({key: "" if value is None else value for key, value in record.items()})


def _read_batch(paths, indices, color, errors, progress):
    """Read the images at ``indices``; report each unreadable one on stderr and record why in ``errors``.

    Returns the indices read and their images, in order.
    """
    kept, images = [], []
    for index in indices:
        try:
            images.append(read_image(paths[index], color=color))
        except (OSError, ValueError) as error:
            errors[index] = _one_line(error)
            progress.write(f"skipped {paths[index]}: {errors[index]}", file=sys.stderr)
        else:
            kept.append(index)
    return kept, images


def _ground_truth_mask(dataset, index, shape):
    mask_path = dataset.mask_paths[index]
    if mask_path is None:
        return np.zeros(shape, dtype=bool)
    mask = read_mask(mask_path)
    if mask.shape != shape:
        raise CommandError(
            f"mask {mask_path} is {mask.shape[0]}x{mask.shape[1]} but its image {dataset.paths[index]} is "
            f"{shape[0]}x{shape[1]} (height x width)."
        )
    return mask


def _write_scores(path, dataset, scores, predictions, errors):
    """``scores.csv``: one row per image; an image that could not be scored has empty values and an error."""
    header = ["path", "score", "anomaly_score", "prediction"]
    if dataset.labels is not None:
        header.append("label")
    header.append("error")
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for index, (image_path, score, prediction) in enumerate(zip(dataset.paths, scores, predictions)):
            if index in errors:
                row = [str(image_path), "", "", ""]
            else:
                row = [str(image_path), repr(float(score)), repr(float(-score)), int(prediction)]
            if dataset.labels is not None:
                row.append(int(dataset.labels[index]))
            row.append(errors.get(index, ""))
            writer.writerow(row)


if __name__ == "__main__":
    raise SystemExit(main())
