"""Model files (skflow_ad.persistence): bit-identical round trips without unpickling, versions, bad files."""

import _pickle
import copy
import hashlib
import json
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from safetensors.torch import save_file as real_save_file
from sklearn.exceptions import NotFittedError

import skflow_ad
from skflow_ad import CSFlowDetector, ModelFileError, ModelVersionWarning, UFlowDetector, persistence
from skflow_ad.base import FITTED_ATTRIBUTES
from skflow_ad.modes import MODES

from .conftest import FAST_UFLOW

FAKE_OLD_VERSIONS = {
    "skflow_ad": "0.0.1", "torch": "1.13.0", "timm": "0.6.12", "FrEIA": "0.2",
    "scikit-learn": "1.2.0", "numpy": "1.24.0", "safetensors": "0.3.0", "python": "3.9.0",
}


# ----------------------------------------------------------------- helpers
def _assert_same_image_predictions(loaded, original, X, methods):
    """Scores, labels, maps, masks and log-NFA maps equal to the last bit (one network pass per method)."""
    for method in methods:
        got, expected = loaded.inspect(X, method=method), original.inspect(X, method=method)
        np.testing.assert_array_equal(got.scores, expected.scores)
        np.testing.assert_array_equal(got.labels, expected.labels)
        for name in ("anomaly_maps", "masks") + (("log_nfa",) if method != "threshold" else ()):
            assert len(getattr(got, name)) == len(X)
            for a, b in zip(getattr(got, name), getattr(expected, name)):
                np.testing.assert_array_equal(a, b)


def _entries(path):
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _write_zip(path, entries):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)


def _edited(source, target, manifest=None, weights=None, drop=(), resign=False):
    """A copy of model file ``source`` at ``target`` with its manifest and/or weights edited."""
    entries = _entries(source)
    data = json.loads(entries["manifest.json"])
    if manifest is not None:
        data = manifest(data)
    if weights is not None:
        entries["weights.safetensors"] = weights(entries["weights.safetensors"])
    if resign:
        data["weights"]["sha256"] = hashlib.sha256(entries["weights.safetensors"]).hexdigest()
    entries["manifest.json"] = json.dumps(data).encode()
    for name in drop:
        del entries[name]
    _write_zip(target, entries)
    return target


def _fake_versions(monkeypatch, versions):
    monkeypatch.setattr(persistence, "current_versions", lambda: dict(versions))


@pytest.fixture(scope="module")
def model_file(fitted_uflow, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "uflow.skad"
    fitted_uflow.save(path)
    return path


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.RandomState(0)
    return rng.randn(80, 5), rng.randn(20, 5) * 1.5


@pytest.fixture(scope="module")
def vector_frames(vectors):
    """The vectors as data frames with column names (``feature_names_in_``)."""
    pandas = pytest.importorskip("pandas")
    return tuple(pandas.DataFrame(v, columns=[f"feature_{i}" for i in range(5)]) for v in vectors)


@pytest.fixture(scope="module")
def fitted_vectors(vector_frames):
    return UFlowDetector(flow_steps=2, max_epochs=3, batch_size=16, random_state=0).fit(vector_frames[0])


# ------------------------------------------------------------ round trips
def test_uflow_round_trip_is_bit_identical(fitted_uflow, small_images, tmp_path):
    path = tmp_path / "any-name.model"  # .skad is the convention, not a requirement
    fitted_uflow.save(path)
    assert sorted(_entries(path)) == ["manifest.json", "weights.safetensors"]
    loaded = skflow_ad.load(path)
    assert type(loaded) is UFlowDetector
    assert loaded.get_params() == fitted_uflow.get_params()
    for name in ("offset_", "pixel_threshold_", "image_size_", "n_channels_", "feature_shapes_", "latent_shapes_",
                 "feature_cache_dtype_", "loss_curve_", "validation_loss_curve_", "best_loss_", "n_iter_",
                 "input_kind_", "device_", "_fit_params", "_seed", "_dtype"):
        assert getattr(loaded, name) == getattr(fitted_uflow, name), name
    assert type(loaded.image_size_) is tuple and all(type(s) is tuple for s in loaded.feature_shapes_)
    # every mask method reads the same network outputs: one NFA method and the threshold cover them
    _assert_same_image_predictions(loaded, fitted_uflow, small_images[:4], methods=("tree_nfa",))
    # a list of images of different sizes: maps and masks at each image's own size
    rng = np.random.RandomState(1)
    mixed = [small_images[0], (rng.rand(40, 48) * 255).astype(np.uint8), (rng.rand(24, 36) * 255).astype(np.uint8)]
    _assert_same_image_predictions(loaded, fitted_uflow, mixed, methods=("threshold",))
    assert [m.shape for m in loaded.inspect(mixed, method="threshold").masks] == [(32, 32), (40, 48), (24, 36)]


ADDED_PARAMETERS = ("base_std", "backbone_batchnorm", "map_scale_weights", "map_calibration")


def _without_added_parameters(manifest):
    """A manifest as skflow_ad wrote it before the parameters of ``_legacy_parameter_values`` existed."""
    for name in ADDED_PARAMETERS:
        del manifest["params"][name]
        del manifest["fitted"]["_fit_params"][name]
    return manifest


def test_files_from_before_a_parameter_existed_load_with_its_old_behaviour(small_images, tmp_path):
    # Fitted as every U-Flow was before the parameters were added.
    original = UFlowDetector(**FAST_UFLOW, base_std=1.0, backbone_batchnorm="frozen", map_scale_weights=None,
                             map_calibration="none").fit(small_images)
    assert set(UFlowDetector._legacy_parameter_values) == set(ADDED_PARAMETERS)
    original.save(tmp_path / "now.skad")
    _edited(tmp_path / "now.skad", tmp_path / "old.skad", _without_added_parameters)
    loaded = skflow_ad.load(tmp_path / "old.skad")
    assert loaded.get_params() == original.get_params()
    assert loaded._fit_params == original._fit_params
    _assert_same_image_predictions(loaded, original, small_images[:4], methods=("tree_nfa",))
    # a pickle from then: the same state without those names
    state = copy.deepcopy(original.__getstate__())
    for name in ADDED_PARAMETERS:
        del state[name], state["_fit_params"][name]
    unpickled = UFlowDetector.__new__(UFlowDetector)
    unpickled.__setstate__(state)
    assert unpickled.get_params() == original.get_params()
    np.testing.assert_array_equal(unpickled.score_samples(small_images), original.score_samples(small_images))


def test_manifest_records_checksum_and_versions(model_file):
    entries = _entries(model_file)
    manifest = json.loads(entries["manifest.json"])
    assert manifest["format"] == "skflow_ad.model" and manifest["format_version"] == persistence.FORMAT_VERSION == 1
    assert manifest["class"] == "UFlowDetector"
    assert manifest["weights"]["sha256"] == hashlib.sha256(entries["weights.safetensors"]).hexdigest()
    assert manifest["weights"]["networks"] == {"flow_": "flow.", "extractor_": "extractor."}
    assert manifest["versions"] == persistence.current_versions()
    assert manifest["versions"]["skflow_ad"] == skflow_ad.__version__
    assert manifest["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert set(manifest["versions"]) == {"skflow_ad", "torch", "timm", "FrEIA", "scikit-learn", "numpy",
                                         "safetensors", "python"}
    assert manifest["fitted"]["image_size_"] == {"$tuple": [32, 32]}


def test_parameters_round_trip_faithfully(vectors, tmp_path):
    # tuples stay tuples, lists lists, paths paths, a RandomState keeps its state
    random_state = np.random.RandomState(3)
    det = UFlowDetector(
        image_size=(32, 32), pretrained=Path("weights") / "resnet18.pth", random_state=random_state,
        contamination=0.1, verbose=0, flow_steps=2, max_epochs=2, batch_size=16,
    ).fit(vectors[0])
    det.set_params(flow_steps=7)  # changed after fitting: kept as a parameter, not used by the fitted model
    det.save(tmp_path / "m.skad")
    loaded = skflow_ad.load(tmp_path / "m.skad")
    params = loaded.get_params()
    assert params["image_size"] == (32, 32) and type(params["image_size"]) is tuple
    assert params["pretrained"] == Path("weights") / "resnet18.pth" and isinstance(params["pretrained"], Path)
    assert params["contamination"] == 0.1 and params["verbose"] == 0 and params["flow_steps"] == 7
    assert isinstance(params["random_state"], np.random.RandomState)
    assert params["random_state"].randint(10**9) == random_state.randint(10**9)
    assert loaded._fit_params["flow_steps"] == 2
    np.testing.assert_array_equal(loaded.score_samples(vectors[1]), det.score_samples(vectors[1]))

    det.set_params(image_size=[32, 32])
    det.save(tmp_path / "m.skad")
    assert type(skflow_ad.load(tmp_path / "m.skad").image_size) is list


def test_vector_mode_round_trip_is_bit_identical(fitted_vectors, vectors, vector_frames, tmp_path):
    test = vector_frames[1]
    fitted_vectors.save(tmp_path / "vectors.skad")
    loaded = skflow_ad.load(tmp_path / "vectors.skad")
    assert loaded.extractor_ is None and loaded._dtype == torch.float64 and loaded.n_features_in_ == 5
    np.testing.assert_array_equal(loaded.feature_names_in_, fitted_vectors.feature_names_in_)
    assert loaded.feature_names_in_.dtype == object
    for got, expected in zip(loaded._standardize, fitted_vectors._standardize):
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, expected)
    for method in ("score_samples", "decision_function", "predict"):
        np.testing.assert_array_equal(getattr(loaded, method)(test), getattr(fitted_vectors, method)(test))

    csflow = CSFlowDetector(n_coupling_blocks=2, max_epochs=2, batch_size=16, random_state=0).fit(vectors[0])
    csflow.save(tmp_path / "csflow-vectors.skad")
    loaded = skflow_ad.load(tmp_path / "csflow-vectors.skad")
    np.testing.assert_array_equal(loaded.score_samples(vectors[1]), csflow.score_samples(vectors[1]))


def test_csflow_efficientnet_round_trip_is_bit_identical(tmp_path):
    rng = np.random.RandomState(0)
    images = (rng.rand(4, 128, 128) * 255).astype(np.uint8)
    det = CSFlowDetector(
        pretrained=False, image_size=128, cross_conv_hidden_channels=16, kernel_sizes=(3, 3, 3, 5),
        max_epochs=1, batch_size=8, random_state=0,
    ).fit(images)
    det.save(tmp_path / "csflow.skad")
    loaded = skflow_ad.load(tmp_path / "csflow.skad")
    assert type(loaded) is CSFlowDetector
    assert loaded.kernel_sizes == (3, 3, 3, 5) and type(loaded.kernel_sizes) is tuple
    assert loaded.feature_shapes_ == det.feature_shapes_ == [(304, 4, 4), (304, 2, 2), (304, 1, 1)]
    assert loaded.pixel_threshold_ == det.pixel_threshold_
    _assert_same_image_predictions(loaded, det, images[:2], methods=("block_nfa",))


def test_declared_fitted_attributes_are_what_fit_sets(fitted_uflow, fitted_vectors):
    # the model-file check of a manifest relies on these declarations
    for det, optional in ((fitted_uflow, set()), (fitted_vectors, {"feature_names_in_"})):
        params = set(det.get_params())
        fitted = {k for k in vars(det) if k not in params and k != "_compiled_network_"}
        declared = set(FITTED_ATTRIBUTES) | set(MODES[det.input_kind_].fitted_attributes)
        assert fitted - optional == declared


# ------------------------------------------------------------- no pickle
@pytest.mark.parametrize("which", ["images", "vectors"])
def test_loading_unpickles_nothing(which, fitted_uflow, fitted_vectors, small_images, vector_frames, tmp_path,
                                   monkeypatch):
    det, X = (fitted_uflow, small_images[:2]) if which == "images" else (fitted_vectors, vector_frames[1])
    det.save(tmp_path / "m.skad")
    expected = det.inspect(X) if which == "images" else det.score_samples(X)

    def forbidden(*args, **kwargs):
        raise AssertionError("loading a model file must not unpickle")

    joblib.dump(det, tmp_path / "m.joblib")
    for target in ("loads", "load", "Unpickler"):
        monkeypatch.setattr(pickle, target, forbidden)
        monkeypatch.setattr(_pickle, target, forbidden)
    monkeypatch.setattr(pickle._Unpickler, "load", forbidden)  # the pure-Python unpickler joblib subclasses
    monkeypatch.setattr(torch, "load", forbidden)
    for unpickle in (lambda: joblib.load(tmp_path / "m.joblib"), lambda: pickle.loads(pickle.dumps(det))):
        with pytest.raises(AssertionError, match="must not unpickle"):  # the patches do catch unpickling
            unpickle()
    loaded = skflow_ad.load(tmp_path / "m.skad")
    if which == "images":
        got = loaded.inspect(X)
        np.testing.assert_array_equal(got.scores, expected.scores)
        np.testing.assert_array_equal(got.anomaly_maps, expected.anomaly_maps)
        np.testing.assert_array_equal(got.masks, expected.masks)
    else:
        np.testing.assert_array_equal(loaded.score_samples(X), expected)


# ------------------------------------------------------- what cannot be saved
class TwoScales(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)

    def forward(self, x):
        a = self.conv1(x)
        return [a, self.conv2(a)]


def test_user_backbone_module_cannot_be_saved_and_joblib_is_the_way(small_images, tmp_path):
    rng = np.random.RandomState(0)
    torch.manual_seed(0)
    trunk = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, 2, 1))
    csflow = CSFlowDetector(trunk, pretrained=False, image_size=32, cross_conv_hidden_channels=8, max_epochs=1,
                            batch_size=8, random_state=0).fit((rng.rand(4, 32, 32) * 255).astype(np.uint8))
    uflow = UFlowDetector(**{**FAST_UFLOW, "backbone": TwoScales(), "max_epochs": 1}).fit(small_images[:4])
    for det in (csflow, uflow):
        name = type(det).__name__
        with pytest.raises(ValueError, match=(
            f"This {name} cannot be saved as a model file: its 'backbone' is a user's nn.Module .*which a model "
            f"file cannot describe; save it with joblib.dump\\(detector, path\\) instead, and load such a pickle "
            f"only from a trusted source")):
            det.save(tmp_path / "user.skad")
        assert not list(tmp_path.iterdir())  # nothing written, no temporary left
    joblib.dump(uflow, tmp_path / "user.joblib")
    loaded = persistence.load_model(tmp_path / "user.joblib", allow_pickle=True)
    np.testing.assert_array_equal(loaded.score_samples(small_images[:1]), uflow.score_samples(small_images[:1]))


def test_unfitted_detector_cannot_be_saved(tmp_path):
    with pytest.raises(NotFittedError, match="This UFlowDetector instance is not fitted yet: call 'fit' before 'save'"):
        UFlowDetector().save(tmp_path / "m.skad")
    from sklearn.ensemble import IsolationForest

    with pytest.raises(TypeError, match="save\\(\\) writes skflow_ad's detectors.*got IsolationForest"):
        persistence.save(IsolationForest(), tmp_path / "m.skad")


# ------------------------------------------------------------- versions
def test_model_file_saved_under_other_versions_warns(fitted_uflow, small_images, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        _fake_versions(patch, FAKE_OLD_VERSIONS)
        fitted_uflow.save(tmp_path / "old.skad")
    now = persistence.current_versions()
    with pytest.warns(ModelVersionWarning) as record:
        loaded = skflow_ad.load(tmp_path / "old.skad")
    [warning] = [w.message for w in record if isinstance(w.message, ModelVersionWarning)]
    assert warning.estimator_name == "UFlowDetector"
    assert warning.saved_versions == {"skflow_ad": "0.0.1", "torch": "1.13.0", "timm": "0.6.12"}
    assert warning.current_versions == {name: now[name] for name in ("skflow_ad", "torch", "timm")}
    assert str(warning).startswith(
        f"UFlowDetector was saved with skflow_ad 0.0.1, torch 1.13.0, timm 0.6.12 and is loaded with "
        f"skflow_ad {now['skflow_ad']}, torch {now['torch']}, timm {now['timm']}: "
    )
    np.testing.assert_array_equal(loaded.score_samples(small_images[:1]), fitted_uflow.score_samples(small_images[:1]))


def test_pickle_saved_under_other_versions_warns(fitted_uflow, monkeypatch):
    with monkeypatch.context() as patch:
        _fake_versions(patch, {**persistence.current_versions(), "skflow_ad": "9.9.9"})
        data = pickle.dumps(fitted_uflow)
    with pytest.warns(ModelVersionWarning, match="saved with skflow_ad 9.9.9 and is loaded with skflow_ad") as record:
        loaded = pickle.loads(data)
    assert record[0].message.saved_versions == {"skflow_ad": "9.9.9"}
    assert loaded.offset_ == fitted_uflow.offset_


def test_pickle_without_version_record_warns(fitted_uflow, monkeypatch):
    # as pickles written before versions were recorded
    with monkeypatch.context() as patch:
        patch.setattr(persistence, "record_versions", lambda state: state)
        data = pickle.dumps(fitted_uflow)
    with pytest.warns(ModelVersionWarning, match="UFlowDetector was saved without a record of its package versions"):
        pickle.loads(data)


def test_same_versions_do_not_warn_and_local_labels_are_ignored(fitted_uflow, tmp_path, monkeypatch):
    now = persistence.current_versions()
    with monkeypatch.context() as patch:
        _fake_versions(patch, {**now, "torch": now["torch"].split("+")[0] + "+cu121", "numpy": "1.0.0"})
        fitted_uflow.save(tmp_path / "m.skad")
        data = pickle.dumps(fitted_uflow)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        skflow_ad.load(tmp_path / "m.skad")
        pickle.loads(data)
        pickle.loads(pickle.dumps(fitted_uflow))


# ----------------------------------------------------------- bad files
def _flip_last_byte(data):
    return data[:-1] + bytes([data[-1] ^ 0xFF])


def _set_fit_param(name, value):
    def edit(manifest):
        manifest["fitted"]["_fit_params"][name] = value
        return manifest
    return edit


def _edit(function):
    def edit(manifest):
        function(manifest)
        return manifest
    return edit


BAD_FILES = {
    "text": (lambda good, path: path.write_bytes(b"hello, I am not a model\n"),
             "is neither a model file written by detector.save \\(a zip archive\\) nor a joblib pickle"),
    "empty": (lambda good, path: path.write_bytes(b""), "is neither a model file"),
    "truncated": (lambda good, path: path.write_bytes(good.read_bytes()[: good.stat().st_size // 2]),
                  "starts like a zip archive but is truncated or damaged"),
    "zip without manifest": (lambda good, path: _write_zip(path, {"notes.txt": b"hi"}),
                             "the zip archive has no manifest.json \\(it was not written by detector.save\\)"),
    "torch.save file": (lambda good, path: torch.save({"w": torch.zeros(2)}, path),
                        "the zip archive has no manifest.json"),
    "bad JSON": (lambda good, path: _write_zip(path, {"manifest.json": b"{not json", "weights.safetensors": b""}),
                 "its manifest.json is not valid JSON"),
    "other JSON": (lambda good, path: _write_zip(path, {"manifest.json": b"[1, 2]"}),
                   "its manifest.json does not describe a skflow_ad model"),
    "newer format": (lambda good, path: _edited(good, path, _edit(lambda m: m.update(format_version=2))),
                     f"it has format version 2 \\(written by skflow_ad {re.escape(skflow_ad.__version__)}\\) "
                     "and this skflow_ad reads version 1; upgrade skflow_ad to load it"),
    "unknown class": (lambda good, path: _edited(good, path, _edit(lambda m: m.update({"class": "os.system"}))),
                      "it names the class 'os.system'; this skflow_ad loads UFlowDetector, CSFlowDetector"),
    "missing weights entry": (lambda good, path: _edited(good, path, drop=["weights.safetensors"]),
                              "the zip archive has no 'weights.safetensors', the weights its manifest names"),
    "checksum mismatch": (lambda good, path: _edited(good, path, weights=_flip_last_byte),
                          "the SHA-256 checksum of its weights does not match its manifest"),
    "damaged member": (lambda good, path: path.write_bytes(_flip_byte_in_weights(good.read_bytes())),
                       "the zip archive is damaged \\(Bad CRC-32"),
    "weights not safetensors": (
        lambda good, path: _edited(good, path, weights=lambda w: b"garbage" * 10, resign=True),
        "its weights are not a readable safetensors file"),
    "architecture mismatch": (lambda good, path: _edited(good, path, _set_fit_param("flow_steps", 2)),
                              "the saved weights do not match the networks rebuilt from the saved parameters "
                              "\\(Error\\(s\\) in loading state_dict for UFlowNet: "
                              "(missing|unexpected) key\\(s\\) in state_dict '"),
    "missing fitted attribute": (lambda good, path: _edited(good, path, _edit(lambda m: m["fitted"].pop("offset_"))),
                                 "its manifest lacks the fitted attribute\\(s\\) \\['offset_'\\]"),
    "unknown parameter": (lambda good, path: _edited(good, path, _edit(lambda m: m["params"].update(colour=1))),
                          "its parameters do not match UFlowDetector of this skflow_ad \\(unknown: \\['colour'\\], "
                          "missing: \\[\\]"),
    "unknown value tag": (lambda good, path: _edited(good, path, _edit(
        lambda m: m["fitted"].update(offset_={"$eval": "__import__('os')"}))),
        "its manifest.json holds a malformed value \\(ValueError: unknown value tag '\\$eval'\\)"),
    "joblib pickle": (lambda good, path: joblib.dump({"not": "a model"}, path),
                      "is a pickle \\(joblib\\) file, not a skflow_ad model file: loading it runs the code it "
                      "contains, so use joblib.load only for files you trust"),
    "compressed joblib pickle": (lambda good, path: joblib.dump([1, 2], path, compress=3),
                                 "is a pickle \\(joblib\\) file"),
}


def _flip_byte_in_weights(data):
    # the weights are stored uncompressed: change one byte in the middle of them, keeping the archive's layout
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_get_one_clear_sentence(case, model_file, tmp_path):
    make, message = BAD_FILES[case]
    path = tmp_path / "bad.skad"
    make(model_file, path)
    for loader in (skflow_ad.load, lambda p: persistence.load_model(p, allow_pickle=False)):
        with pytest.raises(ModelFileError, match=message) as info:
            loader(path)
        text = str(info.value)
        assert isinstance(info.value, ValueError)
        assert text.startswith(f"{str(path)!r} ") and text.endswith(".") and "\n" not in text


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file .*nowhere.skad' does not exist"):
        skflow_ad.load(tmp_path / "nowhere.skad")


# ----------------------------------------------------- either format (CLI)
def test_load_model_reads_both_formats(fitted_uflow, small_images, model_file, tmp_path):
    expected = fitted_uflow.score_samples(small_images[:1])
    np.testing.assert_array_equal(
        persistence.load_model(model_file, allow_pickle=False).score_samples(small_images[:1]), expected
    )
    for compress in (0, 3):
        path = tmp_path / f"model-{compress}.joblib"
        joblib.dump(fitted_uflow, path, compress=compress)
        with pytest.raises(ModelFileError, match="is a pickle \\(joblib\\) file"):
            persistence.load_model(path, allow_pickle=False)
        loaded = persistence.load_model(path, allow_pickle=True)
        np.testing.assert_array_equal(loaded.score_samples(small_images[:1]), expected)


@pytest.mark.parametrize(
    "content, message",
    [
        ({"not": "a model"}, "holds a dict, not a skflow_ad detector"),
        (UFlowDetector(), "holds an unfitted UFlowDetector: fit it before saving"),
        ("truncated", "could not be unpickled as a skflow_ad model \\((EOFError|UnpicklingError)"),
    ],
)
def test_load_model_rejects_pickles_of_other_things(content, message, fitted_uflow, tmp_path):
    path = tmp_path / "thing.joblib"
    if content == "truncated":
        data = pickle.dumps(fitted_uflow)
        path.write_bytes(data[: len(data) // 2])
    else:
        joblib.dump(content, path)
    with pytest.raises(ModelFileError, match=message):
        persistence.load_model(path, allow_pickle=True)


# --------------------------------------------------------- atomic writes
def _failing_save_file(tensors, filename, *args, **kwargs):
    real_save_file(tensors, filename, *args, **kwargs)
    with open(filename, "r+b") as stream:  # half written when the disk fills up
        stream.truncate(os.path.getsize(filename) // 2)
    raise OSError(28, "No space left on device")


def _failing_replace(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("failure", ["weights", "replace"])
def test_interrupted_save_leaves_the_previous_file_intact(failure, fitted_uflow, fitted_vectors, tmp_path,
                                                          monkeypatch):
    path = tmp_path / "model.skad"
    fitted_uflow.save(path)
    before = path.read_bytes()
    with monkeypatch.context() as patch:
        if failure == "weights":
            import safetensors.torch

            patch.setattr(safetensors.torch, "save_file", _failing_save_file)
        else:
            patch.setattr(os, "replace", _failing_replace)
        with pytest.raises(OSError if failure == "weights" else KeyboardInterrupt):
            fitted_vectors.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.skad"]  # no temporary left behind
    fitted_vectors.save(path)  # and a save that completes replaces it
    assert skflow_ad.load(path).input_kind_ == "vectors"


# ------------------------------------------------------------- devices
def test_model_fitted_on_cuda_loads_on_this_machine(fitted_uflow, small_images, tmp_path):
    det = pickle.loads(pickle.dumps(fitted_uflow))
    det.device_ = "cuda:0"  # as if fitted on a GPU machine
    det.save(tmp_path / "gpu.skad")
    assert json.loads(_entries(tmp_path / "gpu.skad")["manifest.json"])["fitted"]["device_"] == "cuda:0"
    loaded = skflow_ad.load(tmp_path / "gpu.skad")
    if torch.cuda.is_available():
        assert loaded.device_ == "cuda:0"
        np.testing.assert_allclose(loaded.score_samples(small_images[:2]),
                                   fitted_uflow.score_samples(small_images[:2]), rtol=1e-5)
    else:
        assert loaded.device_ == "cpu"
        assert all(p.device.type == "cpu" for p in loaded.flow_.parameters())
        np.testing.assert_array_equal(loaded.score_samples(small_images[:2]),
                                      fitted_uflow.score_samples(small_images[:2]))
