"""The ``skflow-ad`` command line, end to end on small generated image folders."""

import csv
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.base import BaseEstimator

import skflow_ad
from skflow_ad import UFlowDetector, cli
from skflow_ad.cli import _key_value, build_parser, main
from skflow_ad.plotting import colorize
from skflow_ad.datasets import load_images, make_surface_train_test
from .torch_free import BLOCK_TORCH

ROOT = Path(__file__).resolve().parents[1]

FAST_OPTIONS = ["--epochs", "1", "--image-size", "32", "--pretrained", "no", "--backbone", "resnet18",
                "--batch-size", "4", "--seed", "0", "--quiet"]


def _save_png(array, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _assert_heatmap_shows(heatmap, anomaly_map, low, high):
    """The PNG's colours are the map's values through colorize; float rounding may move a pixel one level."""
    expected = colorize(anomaly_map, low, high).astype(int)
    difference = np.abs(heatmap.astype(int) - expected)
    assert (difference == 0).mean() > 0.99 and difference.max() <= 8, difference.max()
    assert len(np.unique(heatmap.reshape(-1, 3), axis=0)) > 10  # a real map, not a flat colour


def _one_error_line(stderr):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture(scope="module")
def mvtec_root(tmp_path_factory):
    """An MVTec-AD style category: 12 training images, 3 good and 3 defective test images with masks."""
    data = make_surface_train_test(12, 3, 3, image_size=32, random_state=0)
    root = tmp_path_factory.mktemp("data") / "surface"
    for index, image in enumerate(data.X_train):
        _save_png(image, root / "train" / "good" / f"{index:03d}.png")
    for index, (image, label, mask) in enumerate(zip(data.X_test, data.y_test, data.masks_test)):
        folder = "good" if label == 1 else "defect"
        _save_png(image, root / "test" / folder / f"{index:03d}.png")
        if label == -1:
            _save_png(mask.astype(np.uint8) * 255, root / "ground_truth" / folder / f"{index:03d}_mask.png")
    return root


@pytest.fixture(scope="module")
def model_path(mvtec_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "nested" / "model.skad"
    assert main(["fit", str(mvtec_root), "-o", str(path), *FAST_OPTIONS]) == 0
    return path


@pytest.fixture(scope="module")
def model(model_path):
    return skflow_ad.load(model_path)


# ---------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------


def test_fit_on_mvtec_root_uses_train_good_and_saves_the_options(model_path, model):
    assert isinstance(model, UFlowDetector)
    params = model.get_params()
    assert params["backbone"] == "resnet18" and params["pretrained"] is False
    assert params["image_size"] == 32 and params["max_epochs"] == 1 and params["batch_size"] == 4
    assert params["random_state"] == 0 and params["verbose"] is False
    assert model.n_channels_ == 1 and model.n_iter_ == 1
    assert sorted(p.name for p in model_path.parent.iterdir()) == [model_path.name]  # no temporary file left


def test_fit_plain_folder_recursively_in_color_with_params(tmp_path, capsys):
    data = make_surface_train_test(8, 0, 0, image_size=32, color=True, random_state=1)
    folder = tmp_path / "normal"
    for index, image in enumerate(data.X_train):
        _save_png(image, folder / ("sub" if index % 2 else "") / f"{index}.png")
    _save_png(data.X_train[0][:20], folder / ".hidden.png")  # skipped, or the fit would see 9 images
    (folder / "notes.txt").write_text("not an image")
    path = tmp_path / "color.joblib"  # a pickle suffix: saved with joblib
    status = main(["fit", str(folder), "-o", str(path), *FAST_OPTIONS, "--color",
                   "--param", "flow_steps=2", "--param", "mask_method=threshold",
                   "--param", "contamination=0.1"])
    assert status == 0
    assert "on 8 images" in capsys.readouterr().out
    model = joblib.load(path)
    assert model.n_channels_ == 3
    assert model.flow_steps == 2 and model.mask_method == "threshold" and model.contamination == 0.1


@pytest.mark.parametrize(
    "text, expected",
    [
        ("flow_steps=6", ("flow_steps", 6)),
        ("learning_rate=1e-4", ("learning_rate", 1e-4)),
        ("permute_soft=True", ("permute_soft", True)),
        ("random_state=None", ("random_state", None)),
        ("image_size=(32, 48)", ("image_size", (32, 48))),
        ("mask_method=threshold", ("mask_method", "threshold")),
        ("backbone='resnet18'", ("backbone", "resnet18")),
        ("pretrained=/weights/model.pth", ("pretrained", "/weights/model.pth")),
        (" tol = 0.5 ", ("tol", 0.5)),
    ],
)
def test_param_values_are_literals_or_strings(text, expected):
    assert _key_value(text) == expected


@pytest.mark.parametrize(
    "param, message",
    [
        ("flow_stepz=3", "unknown parameter 'flow_stepz'"),
        ("max_epochs=3", "both --epochs and --param"),
        ("flow_steps=0", "flow_steps"),
    ],
)
def test_bad_param_is_a_usage_error(mvtec_root, tmp_path, capsys, param, message):
    status = main(["fit", str(mvtec_root), "-o", str(tmp_path / "m.joblib"), *FAST_OPTIONS, "--param", param])
    assert status == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("usage: skflow-ad fit")
    if "unknown" in message:  # the valid names are listed
        assert "flow_steps" in err and "nfa_window_size" in err
    assert not (tmp_path / "m.joblib").exists()


# ---------------------------------------------------------------------------
# score
# ---------------------------------------------------------------------------


def test_score_mvtec_root_writes_scores_heatmaps_masks_and_metrics(mvtec_root, model_path, model, tmp_path, capsys):
    out = tmp_path / "results"
    status = main(["score", str(model_path), str(mvtec_root), "-o", str(out), "--heatmaps", "--masks",
                   "--mask-method", "threshold", "--batch-size", "4", "--quiet"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "image AUROC" in printed and "AUPRO" in printed

    rows = _read_csv(out / "scores.csv")
    assert list(rows[0]) == ["path", "score", "anomaly_score", "prediction", "label", "error"]
    assert all(row["error"] == "" for row in rows)
    paths = [Path(row["path"]) for row in rows]
    # test/good first, then the defect folders, as load_mvtec_folder orders them.
    assert [path.parent.name for path in paths] == ["good"] * 3 + ["defect"] * 3
    assert [int(row["label"]) for row in rows] == [1] * 3 + [-1] * 3

    images = load_images(paths)
    scores = np.array([float(row["score"]) for row in rows])
    np.testing.assert_allclose(scores, model.score_samples(images), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([float(row["anomaly_score"]) for row in rows], -scores)
    assert [int(row["prediction"]) for row in rows] == model.predict(images).tolist()

    expected_masks = model.predict_mask(images, method="threshold")
    expected_maps = model.anomaly_map(images)
    for path, expected_mask, expected_map in zip(paths, expected_masks, expected_maps):
        relative = Path(path.parent.name) / path.name
        heatmap = np.asarray(Image.open(out / "heatmaps" / relative))
        assert heatmap.shape == (32, 32, 3) and heatmap.dtype == np.uint8
        # --heatmap-range threshold: 0 to twice the learned pixel threshold, through colorize.
        _assert_heatmap_shows(heatmap, expected_map, 0.0, 2.0 * model.pixel_threshold_)
        mask = np.asarray(Image.open(out / "masks" / relative))
        assert mask.shape == (32, 32) and set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask == 255, expected_mask)

    # regions.csv: the connected regions of each written mask, most severe first.
    regions = _read_csv(out / "regions.csv")
    expected_regions = model.predict_regions(images, method="threshold")
    assert len(regions) == sum(len(r) for r in expected_regions)
    by_image = {}
    for row in regions:
        by_image.setdefault(row["image"], []).append(row)
    for path, expected, expected_mask in zip(paths, expected_regions, expected_masks):
        rows_here = by_image.get(str(path), [])
        assert [int(row["rank"]) for row in rows_here] == list(range(1, len(expected) + 1))
        assert [int(row["area"]) for row in rows_here] == [r.area for r in expected]
        assert sum(int(row["area"]) for row in rows_here) == expected_mask.sum()
        for row, region in zip(rows_here, expected):
            assert float(row["margin"]) == pytest.approx(region.margin) and row["log_nfa"] == ""

    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "best_f1"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["n_images"] == 6 and metrics["n_anomalous"] == 3


def test_score_plain_folder_of_mixed_sizes_keeps_each_size(model_path, model, tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    _save_png(rng.integers(0, 256, (32, 32), dtype=np.uint8), folder / "a.png")
    _save_png(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8), folder / "line2" / "b.png")  # RGB -> gray
    _save_png(rng.integers(0, 256, (24, 36), dtype=np.uint8), folder / "line2" / "a.png")
    out = folder / "results"  # inside the data: must not be read back as images on a second run
    assert main(["score", str(model_path), str(folder), "-o", str(out), "--heatmaps", "--masks", "-q"]) == 0
    assert main(["score", str(model_path), str(folder), "-o", str(out), "-q"]) == 0

    rows = _read_csv(out / "scores.csv")
    assert list(rows[0]) == ["path", "score", "anomaly_score", "prediction", "error"]
    paths = [Path(row["path"]) for row in rows]
    assert [path.relative_to(folder).as_posix() for path in paths] == ["a.png", "line2/a.png", "line2/b.png"]
    images = [load_images([path])[0] for path in paths]
    np.testing.assert_allclose([float(row["score"]) for row in rows], model.score_samples(images),
                               rtol=1e-5, atol=1e-6)
    for name, size in [("a.png", (32, 32)), ("line2/a.png", (24, 36)), ("line2/b.png", (48, 40))]:
        assert np.asarray(Image.open(out / "heatmaps" / name)).shape == (*size, 3)
        assert np.asarray(Image.open(out / "masks" / name)).shape == size
    assert not (out / "metrics.json").exists()

    stretched = tmp_path / "stretched"
    assert main(["score", str(model_path), str(folder), "-o", str(stretched), "--heatmaps", "-q",
                 "--heatmap-range", "image"]) == 0
    for path, anomaly_map in zip(paths, model.anomaly_map(images)):  # each image at its own size
        heatmap = np.asarray(Image.open(stretched / "heatmaps" / path.relative_to(folder)))
        _assert_heatmap_shows(heatmap, anomaly_map, anomaly_map.min(), anomaly_map.max())
        assert tuple(heatmap[np.unravel_index(anomaly_map.argmax(), anomaly_map.shape)]) == (252, 255, 164)


def test_score_names_clashing_stems_apart(model_path, tmp_path):
    folder = tmp_path / "images"
    image = np.full((32, 32), 128, dtype=np.uint8)
    _save_png(image, folder / "part.png")
    _save_png(image, folder / "part.bmp")
    out = tmp_path / "out"
    assert main(["score", str(model_path), str(folder), "-o", str(out), "--heatmaps", "-q"]) == 0
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == ["part_bmp.png", "part_png.png"]


# ---------------------------------------------------------------------------
# help, usage errors, data errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["fit", "score", "export"])
def test_help_explains_every_option_with_its_default(command, capsys):
    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    subparser = build_parser()._subparsers._group_actions[0].choices[command]
    for action in subparser._actions:
        for option in action.option_strings:
            assert option in text
        if action.option_strings and action.dest != "help" and action.dest not in ("output", "param"):
            assert "default" in action.help, action.dest


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["train"],
        ["fit", "data"],  # no -o
        ["fit", "data", "-o", "m.joblib", "--epochs", "0"],
        ["fit", "data", "-o", "m.joblib", "--contamination", "0.7"],
        ["fit", "data", "-o", "m.joblib", "--image-size", "32x"],
        ["fit", "data", "-o", "m.joblib", "--detector", "padim"],
        ["fit", "data", "-o", "m.joblib", "--param", "flow_steps"],
        ["score", "m.joblib", "data", "-o", "out", "--mask-method", "otsu"],
        ["score", "m.joblib", "data", "-o", "out", "--heatmap-range", "2:1"],
        ["score", "m.onnx", "data", "-o", "out", "--runtime", "tensorrt"],
        ["export", "m.skad"],  # no -o
        ["export", "m.skad", "-o", "m.onnx", "--precision", "INT4"],
    ],
)
def test_bad_usage_exits_with_2(argv, capsys):
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def _write_junk_model(path):
    path.write_text("not a model")


def _write_dict_model(path):
    joblib.dump({"weights": [1, 2]}, path)


def _write_unfitted_model(path):
    joblib.dump(UFlowDetector(), path)


def _write_truncated_model(path, source):
    path.write_bytes(source.read_bytes()[:200])


@pytest.mark.parametrize(
    "write_model, message",
    [
        (None, "does not exist"),
        (_write_junk_model, "is neither a model file written by detector.save (a zip archive) nor a joblib pickle"),
        (_write_dict_model, "holds a dict, not a skflow_ad detector"),
        (_write_unfitted_model, "holds an unfitted UFlowDetector"),
    ],
)
def test_score_rejects_bad_model_files(mvtec_root, tmp_path, capsys, write_model, message):
    path = tmp_path / "model.joblib"
    if write_model is not None:
        write_model(path)
    assert main(["score", str(path), str(mvtec_root), "-o", str(tmp_path / "out"), "--allow-pickle"]) == 1
    assert message in _one_error_line(capsys.readouterr().err)


def test_score_rejects_a_truncated_model_file(mvtec_root, model_path, tmp_path, capsys):
    path = tmp_path / "model.skad"
    _write_truncated_model(path, model_path)
    assert main(["score", str(path), str(mvtec_root), "-o", str(tmp_path / "out")]) == 1
    assert "truncated or damaged" in _one_error_line(capsys.readouterr().err)


class _WritesMarker:
    """Unpickling this runs ``Path.touch(marker)``: what a crafted model file can do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_score_never_unpickles_without_allow_pickle(mvtec_root, tmp_path, capsys):
    marker = tmp_path / "ran"
    path = tmp_path / "crafted.joblib"
    joblib.dump(_WritesMarker(marker), path)
    assert main(["score", str(path), str(mvtec_root), "-o", str(tmp_path / "out")]) == 1
    error = _one_error_line(capsys.readouterr().err)
    assert "is a joblib/pickle file" in error and "--allow-pickle" in error and "trusted source" in error
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_score_loads_pickles_with_allow_pickle(mvtec_root, model, tmp_path, capsys):
    path = tmp_path / "model.joblib"
    joblib.dump(model, path)
    out = tmp_path / "out"
    assert main(["score", str(path), str(mvtec_root), "-o", str(out), "--allow-pickle", "-q"]) == 0
    rows = _read_csv(out / "scores.csv")
    files = sorted((mvtec_root / "test").rglob("*.png"))
    assert len(rows) == len(files)
    expected = model.score_samples(load_images([Path(row["path"]) for row in rows]))
    np.testing.assert_allclose([float(row["score"]) for row in rows], expected, rtol=1e-5)


def test_fit_writes_a_model_file_by_default(model_path):
    assert skflow_ad.persistence.file_kind(model_path) == "zip"
    assert sorted(p.name for p in model_path.parent.iterdir()) == [model_path.name]  # no temporary file left


def test_score_data_errors(model_path, tmp_path, capsys):
    assert main(["score", str(model_path), str(tmp_path / "missing"), "-o", str(tmp_path / "out")]) == 1
    assert "does not exist" in _one_error_line(capsys.readouterr().err)

    (tmp_path / "empty").mkdir()
    assert main(["score", str(model_path), str(tmp_path / "empty"), "-o", str(tmp_path / "out")]) == 1
    assert "no image files" in _one_error_line(capsys.readouterr().err)



def test_score_keeps_going_past_unreadable_images(mvtec_root, model_path, model, tmp_path, capsys):
    root = tmp_path / "copy"
    shutil.copytree(mvtec_root, root)
    broken = sorted((root / "test" / "defect").iterdir())[1]
    broken.write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    status = main(["score", str(model_path), str(root), "-o", str(out), "--heatmaps", "--batch-size", "2", "-q"])
    assert status == 3
    err = capsys.readouterr().err
    assert f"skipped {broken}: cannot read image file {broken}" in err
    assert "1 of 6 images could not be scored" in err and "Traceback" not in err

    rows = _read_csv(out / "scores.csv")
    assert len(rows) == 6 and list(rows[0])[-1] == "error"
    bad = [row for row in rows if Path(row["path"]) == broken]
    assert len(bad) == 1 and bad[0]["score"] == bad[0]["prediction"] == "" and "cannot read" in bad[0]["error"]
    assert bad[0]["label"] == "-1"
    good = [row for row in rows if Path(row["path"]) != broken]
    images = load_images([Path(row["path"]) for row in good])
    np.testing.assert_allclose([float(row["score"]) for row in good], model.score_samples(images),
                               rtol=1e-5, atol=1e-6)
    assert all(row["error"] == "" for row in good)
    assert sorted(p.name for p in (out / "heatmaps" / "defect").iterdir()) == sorted(
        Path(row["path"]).name for row in good if Path(row["path"]).parent.name == "defect")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 5 and metrics["n_anomalous"] == 2


def test_score_of_only_unreadable_images_writes_their_rows(model_path, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "truncated.png").write_bytes(b"\x89PNG not really")
    assert main(["score", str(model_path), str(broken), "-o", str(tmp_path / "out"), "-q"]) == 3
    assert "skipped" in capsys.readouterr().err
    (row,) = _read_csv(tmp_path / "out" / "scores.csv")
    assert row["score"] == "" and "cannot read image file" in row["error"]


def test_score_reads_float_tiffs_as_floats(model_path, model, tmp_path):
    folder = tmp_path / "floats"
    folder.mkdir()
    images = np.random.RandomState(0).rand(2, 32, 32).astype(np.float32)
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{index}.tif")
    assert main(["score", str(model_path), str(folder), "-o", str(tmp_path / "out"), "-q"]) == 0
    rows = _read_csv(tmp_path / "out" / "scores.csv")
    np.testing.assert_allclose([float(row["score"]) for row in rows], model.score_samples(images),
                               rtol=1e-5, atol=1e-6)


def test_progress_bars_on_stderr_unless_quiet(mvtec_root, model_path, tmp_path, capsys):
    folder = tmp_path / "few"
    folder.mkdir()
    for path in sorted((mvtec_root / "train" / "good").iterdir())[:4]:
        shutil.copy(path, folder / path.name)
    options = [option for option in FAST_OPTIONS if option != "--quiet"]
    assert main(["fit", str(folder), "-o", str(tmp_path / "m.joblib"), *options]) == 0
    err = capsys.readouterr().err
    assert "reading" in err and "4/4" in err  # reading the images the CLI loops over
    image = folder / sorted(p.name for p in folder.iterdir())[0]
    assert main(["score", str(model_path), str(image), "-o", str(tmp_path / "out")]) == 0
    assert "scoring" in capsys.readouterr().err
    assert main(["score", str(model_path), str(image), "-o", str(tmp_path / "out"), "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_score_rejects_masks_of_the_wrong_size(mvtec_root, model_path, tmp_path, capsys):
    root = tmp_path / "copy"
    shutil.copytree(mvtec_root, root)
    mask = next((root / "ground_truth" / "defect").iterdir())
    _save_png(np.zeros((16, 16), dtype=np.uint8), mask)
    assert main(["score", str(model_path), str(root), "-o", str(tmp_path / "out"), "-q"]) == 1
    assert "mask" in _one_error_line(capsys.readouterr().err)


def test_score_without_ground_truth_masks_gives_image_metrics_only(mvtec_root, model_path, tmp_path, capsys):
    root = tmp_path / "copy"
    shutil.copytree(mvtec_root, root)
    shutil.rmtree(root / "ground_truth")
    assert main(["score", str(model_path), str(root), "-o", str(tmp_path / "out"), "-q"]) == 0
    assert "pixel metrics need a mask" in capsys.readouterr().err
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["pixel_auroc"] is None and metrics["aupro"] is None
    assert 0.0 <= metrics["image_auroc"] <= 1.0


def test_fit_data_and_path_errors(tmp_path, capsys):
    model = str(tmp_path / "m.joblib")
    assert main(["fit", str(tmp_path / "missing"), "-o", model, *FAST_OPTIONS]) == 1
    assert "does not exist" in _one_error_line(capsys.readouterr().err)

    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("no images here")
    assert main(["fit", str(tmp_path / "empty"), "-o", model, *FAST_OPTIONS]) == 1
    assert "no image files" in _one_error_line(capsys.readouterr().err)

    options = [*FAST_OPTIONS, "--pretrained", str(tmp_path / "weights.pth")]  # the last --pretrained wins
    assert main(["fit", str(tmp_path / "empty"), "-o", model, *options]) == 1
    assert "weights.pth" in _one_error_line(capsys.readouterr().err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_fit_on_unavailable_device_fails_before_reading_data(mvtec_root, tmp_path, capsys):
    assert main(["fit", str(mvtec_root), "-o", str(tmp_path / "m.joblib"), *FAST_OPTIONS, "--device", "cuda"]) == 1
    assert "CUDA is not available" in _one_error_line(capsys.readouterr().err)


def test_missing_detector_module_is_a_clear_error(mvtec_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "skflow_ad.csflow", None)  # makes the import fail
    status = main(["fit", str(mvtec_root), "-o", str(tmp_path / "m.joblib"), *FAST_OPTIONS, "--detector", "csflow"])
    assert status == 1
    assert "csflow detector is not available" in _one_error_line(capsys.readouterr().err)


class DetectorWithoutBackbone(BaseEstimator):
    """A stand-in detector with no backbone parameter (both real detectors have one)."""

    def __init__(self, image_size=32, verbose=False):
        self.image_size = image_size
        self.verbose = verbose


def test_option_the_detector_lacks_is_a_usage_error(mvtec_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(cli.DETECTORS, "plain", (__name__, "DetectorWithoutBackbone"))
    status = main(["fit", str(mvtec_root), "-o", str(tmp_path / "m.joblib"), "--detector", "plain",
                   "--backbone", "resnet18"])
    assert status == 2
    err = capsys.readouterr().err
    assert "--backbone does not apply to the plain detector, which has no 'backbone' parameter" in err
    assert err.startswith("usage: skflow-ad fit") and not (tmp_path / "m.joblib").exists()


def test_offline_fit_fails_at_once_naming_the_cli_options(mvtec_root, tmp_path, capsys, monkeypatch):
    huggingface_constants = pytest.importorskip("huggingface_hub.constants")
    # No weights cached anywhere, and the Hub does not answer.
    monkeypatch.setattr(huggingface_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(cli, "_reachable", lambda url, timeout=None: False)
    waits = []
    monkeypatch.setattr(time, "sleep", waits.append)  # download retries wait between attempts
    options = [*FAST_OPTIONS, "--pretrained", "yes"]  # the last --pretrained wins
    assert main(["fit", str(mvtec_root), "-o", str(tmp_path / "m.joblib"), *options]) == 1
    err = capsys.readouterr().err
    assert "does not answer; pretrained weights come from the local cache only" in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: cannot get the pretrained weights of the backbone")
    assert "--pretrained no" in line and "--pretrained PATH" in line
    assert [wait for wait in waits if wait >= 0.5] == []  # no retries
    assert not huggingface_constants.HF_HUB_OFFLINE and "HF_HUB_OFFLINE" not in os.environ  # restored


def test_reachable_means_any_http_answer(monkeypatch):
    for variable in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # answers 501
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert cli._reachable(f"http://127.0.0.1:{server.server_port}/", timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert not cli._reachable(f"http://127.0.0.1:{port}/", timeout=5)  # connection refused
    assert not cli._reachable("not a url", timeout=5)


def test_installed_entry_point_prints_help():
    script = Path(sys.executable).with_name("skflow-ad")
    if not script.exists():
        found = shutil.which("skflow-ad")
        if found is None:
            pytest.skip("the skflow-ad entry point is not installed (pip install -e .)")
        script = Path(found)
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: skflow-ad" in result.stdout and "fit" in result.stdout and "score" in result.stdout


# ---------------------------------------------------------------------------
# export, and score with an exported model
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported_path(model_path):
    pytest.importorskip("onnxscript")
    path = model_path.with_name("model.onnx")
    assert main(["export", str(model_path), "-o", str(path)]) == 0
    return path


def _scores_of(rows):
    return np.array([float(row["score"]) for row in rows])


def test_score_with_an_exported_model_writes_the_detectors_results(mvtec_root, model_path, exported_path, tmp_path,
                                                                   capsys):
    pytest.importorskip("onnxruntime")
    assert main(["score", str(model_path), str(mvtec_root), "-o", str(tmp_path / "torch"), "--masks",
                 "--mask-method", "block_nfa", "--quiet"]) == 0
    assert main(["score", str(exported_path), str(mvtec_root), "-o", str(tmp_path / "onnx"), "--masks",
                 "--mask-method", "block_nfa", "--quiet"]) == 0
    expected, got = _read_csv(tmp_path / "torch" / "scores.csv"), _read_csv(tmp_path / "onnx" / "scores.csv")
    assert [row["path"] for row in got] == [row["path"] for row in expected]
    np.testing.assert_allclose(_scores_of(got), _scores_of(expected), rtol=1e-4)
    assert [row["prediction"] for row in got] == [row["prediction"] for row in expected]
    for mask in sorted((tmp_path / "torch" / "masks").rglob("*.png")):
        twin = tmp_path / "onnx" / "masks" / mask.relative_to(tmp_path / "torch" / "masks")
        np.testing.assert_array_equal(np.asarray(Image.open(twin)), np.asarray(Image.open(mask)))
    metrics = json.loads((tmp_path / "onnx" / "metrics.json").read_text())
    assert metrics == pytest.approx(json.loads((tmp_path / "torch" / "metrics.json").read_text()), rel=1e-4)


def test_export_lays_the_graph_out_for_the_runtime_asked(model_path, exported_path, tmp_path):
    from skflow_ad.deploy import ExportedDetector

    path = tmp_path / "for_openvino.onnx"
    assert main(["export", str(model_path), "-o", str(path), "--graph-runtime", "openvino"]) == 0
    assert ExportedDetector(path).metadata_["graph_runtime"] == "openvino"
    assert ExportedDetector(exported_path).metadata_["graph_runtime"] == "onnxruntime"


def test_export_with_the_block_nfa_map_adds_the_detectors_map_to_the_graph(model_path, exported_path, tmp_path,
                                                                          capsys):
    onnxruntime = pytest.importorskip("onnxruntime")
    import skflow_ad

    path = tmp_path / "with_nfa.onnx"
    assert main(["export", str(model_path), "-o", str(path), "--block-nfa-map"]) == 0
    detector = skflow_ad.load(model_path)
    images = (np.random.RandomState(3).rand(2, *detector.image_size_, detector.n_channels_) * 255).astype(np.uint8)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[-1].name == "block_log_nfa"
    np.testing.assert_allclose(session.run(["block_log_nfa"], {"images": images})[0],
                               detector.log_nfa_map(images, "block_nfa"), rtol=0, atol=1e-5)
    assert main(["export", str(exported_path), "-o", str(tmp_path / "m.xml"), "--block-nfa-map"]) == 2
    assert "--block-nfa-map goes with a detector file" in capsys.readouterr().err


def test_export_converts_to_openvino_and_score_runs_it(mvtec_root, model_path, exported_path, tmp_path, capsys):
    pytest.importorskip("openvino")
    xml = tmp_path / "model.xml"
    assert main(["export", str(exported_path), "-o", str(xml), "--precision", "FP32"]) == 0
    assert f"wrote {xml} and {xml.with_suffix('.bin')}" in capsys.readouterr().out
    assert main(["score", str(xml), str(mvtec_root), "-o", str(tmp_path / "ov"), "--quiet"]) == 0
    assert main(["score", str(model_path), str(mvtec_root), "-o", str(tmp_path / "torch"), "--quiet"]) == 0
    np.testing.assert_allclose(_scores_of(_read_csv(tmp_path / "ov" / "scores.csv")),
                               _scores_of(_read_csv(tmp_path / "torch" / "scores.csv")), rtol=1e-4)


def test_export_and_exported_model_errors(mvtec_root, model_path, exported_path, tmp_path, capsys, monkeypatch):
    assert main(["export", str(exported_path), "-o", str(tmp_path / "again.onnx")]) == 2
    assert "is already an ONNX model; export converts it to OpenVINO IR only" in capsys.readouterr().err
    assert main(["export", str(model_path), "-o", str(tmp_path / "model.xml"), "--format", "onnx"]) == 2
    assert "an ONNX model cannot be written to an .xml file" in capsys.readouterr().err
    not_ours = tmp_path / "notes.onnx"
    not_ours.write_text("not a model")
    assert main(["score", str(not_ours), str(mvtec_root), "-o", str(tmp_path / "out")]) == 1
    assert "could not be read as a model by onnxruntime" in _one_error_line(capsys.readouterr().err)
    for output in ("model.xml", "again.onnx"):
        source = exported_path if output == "again.onnx" else model_path
        assert main(["export", str(source), "-o", str(tmp_path / output), "--graph-runtime", "openvino"]) == 2
        assert "--graph-runtime goes with an ONNX output exported from a detector file" in capsys.readouterr().err
    assert not list(tmp_path.glob("model.*")) and not (tmp_path / "again.onnx").exists()
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    assert main(["export", str(model_path), "-o", str(tmp_path / "model.onnx")]) == 1
    assert 'pip install "skflow-ad[export]"' in _one_error_line(capsys.readouterr().err)


def test_export_int8_needs_calibration_images_and_scores_like_the_detector(mvtec_root, model_path, tmp_path,
                                                                             capsys):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    xml = tmp_path / "int8.xml"
    assert main(["export", str(model_path), "-o", str(xml), "--precision", "INT8"]) == 2
    assert "--calibration DATA goes with --precision INT8, and only with it" in capsys.readouterr().err
    assert main(["export", str(model_path), "-o", str(xml), "--calibration", str(mvtec_root)]) == 2
    assert "--calibration DATA goes with --precision INT8" in capsys.readouterr().err
    assert not xml.exists()
    assert main(["export", str(model_path), "-o", str(xml), "--precision", "INT8", "--calibration",
                 str(mvtec_root)]) == 0
    exported = skflow_ad.ExportedDetector(xml, "openvino")
    assert exported.metadata_["int8"]["calibration_images"] == 12  # train/good of the MVTec root
    assert main(["score", str(xml), str(mvtec_root), "-o", str(tmp_path / "int8"), "--quiet"]) == 0
    assert main(["score", str(model_path), str(mvtec_root), "-o", str(tmp_path / "torch"), "--quiet"]) == 0
    got, expected = (_scores_of(_read_csv(tmp_path / name / "scores.csv")) for name in ("int8", "torch"))
    assert got.shape == expected.shape and np.all(np.isfinite(got))
    assert np.corrcoef(got, expected)[0, 1] > 0.5  # quantized, so not the same numbers: the same ordering trend


def test_score_with_an_exported_model_runs_where_torch_cannot_be_imported(mvtec_root, exported_path, model_path,
                                                                           tmp_path):
    code = BLOCK_TORCH + """
from skflow_ad.cli import main
status = main(sys.argv[1:])
gone = sorted({name.split(".")[0] for name in sys.modules if name.split(".")[0] in ("torch", "timm")})
print(json.dumps({"status": status, "imported": gone}))
"""
    def run(*args):
        result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                                cwd=ROOT, timeout=300)
        return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr

    got, stderr = run("score", exported_path, mvtec_root, "-o", tmp_path / "no_torch", "--quiet", "--masks")
    assert got == {"status": 0, "imported": []}, stderr
    assert main(["score", str(exported_path), str(mvtec_root), "-o", str(tmp_path / "torch"), "--quiet"]) == 0
    np.testing.assert_allclose(_scores_of(_read_csv(tmp_path / "no_torch" / "scores.csv")),
                               _scores_of(_read_csv(tmp_path / "torch" / "scores.csv")), rtol=1e-6)
    # What needs torch says so, and how to install it.
    got, stderr = run("score", model_path, mvtec_root, "-o", tmp_path / "skad")
    assert got["status"] == 1 and 'is a detector file, which needs torch' in stderr
    assert 'pip install "skflow-ad[torch]"' in stderr and "score the .onnx file" in stderr
    got, stderr = run("fit", mvtec_root, "-o", tmp_path / "model.skad", "--pretrained", "no")
    assert got["status"] == 1 and 'fit needs torch' in stderr and 'pip install "skflow-ad[torch]"' in stderr
    got, stderr = run("fit", "--help")
    assert got["status"] == 0
