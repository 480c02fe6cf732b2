"""Dask: GridSearchCV through joblib's dask backend and score_partitions, on a local cluster."""

import math
import sys

import joblib
import numpy as np
import pytest
from PIL import Image
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from skflow_ad import (
    NormalOnlyKFold, UFlowDetector, load_images, make_surface_defects, make_surface_train_test, score_partitions,
)
from skflow_ad.model_selection import image_auroc_scorer

from .conftest import FAST_UFLOW

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")
from dask.utils import key_split  # noqa: E402  (dask is present once distributed is)

DETECTOR = dict(FAST_UFLOW, max_epochs=1, validation_fraction=0)
PARTITION_SIZE = 4
METHODS = ["score_samples", "decision_function", "predict", "anomaly_map", "log_nfa_map", "predict_mask"]


pytestmark = [
    # The fitted test detector (about 20 MB pickled) is one node of the task graph, above
    # distributed's 10 MB warning threshold: the warning is expected here.
    pytest.mark.filterwarnings("ignore:Sending large graph:UserWarning"),
    pytest.mark.usefixtures("one_torch_thread"),  # as in dask's worker processes
]


@pytest.fixture(scope="module")
def client():
    # Worker processes, so the detector really is pickled and sent to them.
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster, distributed.Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def data():
    return make_surface_train_test(n_train=16, n_test_normal=5, n_test_anomalous=5, image_size=32, random_state=0)


@pytest.fixture(scope="module")
def detector(data):
    return UFlowDetector(**DETECTOR).fit(data.X_train)


@pytest.fixture(scope="module")
def sources(data, tmp_path_factory):
    """The test images as a numpy array, a dask array with uneven chunks, and PNG paths."""
    folder = tmp_path_factory.mktemp("pngs")
    paths = []
    for i, image in enumerate(data.X_test):
        paths.append(folder / f"{i:02d}.png")
        Image.fromarray(image).save(paths[-1])
    return {"numpy": data.X_test, "dask": da.from_array(data.X_test, chunks=(3, 16, 32)), "paths": paths}


def _assert_same(result, expected):
    assert result.dtype == expected.dtype and result.shape == expected.shape
    if expected.dtype.kind == "f":
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(result, expected)


def test_grid_search_on_the_dask_backend_matches_the_local_search(client):
    X, y, _ = make_surface_defects(n_normal=8, n_anomalous=2, image_size=32, random_state=0)

    def search(n_jobs):
        return GridSearchCV(
            UFlowDetector(**DETECTOR), {"flow_steps": [1, 2]}, scoring=image_auroc_scorer,
            cv=NormalOnlyKFold(2, shuffle=True, random_state=0), refit=False, n_jobs=n_jobs,
        )

    local = search(n_jobs=None).fit(X, y)
    with distributed.get_task_stream(client) as stream, joblib.parallel_backend("dask"):
        remote = search(n_jobs=2).fit(X, y)

    assert remote.cv_results_["params"] == local.cv_results_["params"]
    for key in ("split0_test_score", "split1_test_score", "mean_test_score"):
        np.testing.assert_allclose(remote.cv_results_[key], local.cv_results_[key], rtol=1e-6)
    # The fits ran as tasks of the cluster's workers.
    assert stream.data
    assert {task["worker"] for task in stream.data} <= set(client.scheduler_info()["workers"])


@pytest.mark.parametrize("source", ["numpy", "dask", "paths"])
def test_score_partitions_equals_the_method_on_all_images(detector, data, sources, source):
    # Every method and input kind, on the synchronous scheduler of this process.
    for method in METHODS:
        result = score_partitions(detector, sources[source], method, partition_size=PARTITION_SIZE)
        expected = getattr(detector, method)(data.X_test)
        assert (result.dtype, result.shape) == (expected.dtype, expected.shape)
        assert result.chunks[0] == (4, 4, 2)  # partitions of PARTITION_SIZE images, whatever the input chunks
        _assert_same(result.compute(scheduler="sync"), expected)


@pytest.mark.parametrize("source, method", [("numpy", "score_samples"), ("paths", "predict_mask")])
def test_score_partitions_runs_one_task_per_partition_on_the_cluster(client, detector, data, sources, source, method):
    result = score_partitions(detector, sources[source], method, partition_size=PARTITION_SIZE)
    n_partitions = math.ceil(len(data.X_test) / PARTITION_SIZE)
    assert result.numblocks[0] == n_partitions

    with distributed.get_task_stream(client) as stream:
        computed = result.compute()
    _assert_same(computed, getattr(detector, method)(data.X_test))
    names = [key_split(task["key"]) for task in stream.data]
    assert names.count(method) == n_partitions
    assert names.count(type(detector).__name__) == 1  # the detector is sent once, not per partition
    assert {task["worker"] for task in stream.data} <= set(client.scheduler_info()["workers"])


def test_paths_are_read_at_image_size(detector, data, sources):
    maps = score_partitions(detector, sources["paths"], "anomaly_map", partition_size=4, image_size=(24, 16))
    assert maps.shape == (len(data.X_test), 24, 16)
    expected = detector.anomaly_map(load_images(sources["paths"], image_size=(24, 16)))
    _assert_same(maps.compute(scheduler="sync"), expected)


def test_files_are_read_with_the_detectors_channels(tmp_path):
    X = make_surface_train_test(n_train=8, n_test_normal=2, n_test_anomalous=2, image_size=32, color=True,
                                random_state=0).X_train
    detector = UFlowDetector(**DETECTOR).fit(X)
    paths = [tmp_path / f"{i}.png" for i in range(len(X))]
    for path, image in zip(paths, X):
        Image.fromarray(image).save(path)
    scores = score_partitions(detector, paths, partition_size=PARTITION_SIZE)  # color=None: RGB, as fitted
    _assert_same(scores.compute(scheduler="sync"), detector.score_samples(X))


def test_maps_of_files_need_one_size_known_up_front(detector, data, tmp_path):
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    Image.fromarray(data.X_test[0]).save(paths[0])
    Image.fromarray(data.X_test[1][:24]).save(paths[1])
    images = [data.X_test[0], data.X_test[1][:24]]
    for partition_size in (1, 2):  # scores do not need one size, even within a partition
        scores = score_partitions(detector, paths, partition_size=partition_size).compute(scheduler="sync")
        _assert_same(scores, detector.score_samples(images))
    maps = score_partitions(detector, paths, "anomaly_map", partition_size=1)
    with pytest.raises(ValueError, match=r"b\.png is 24 x 32 .* Pass image_size"):
        maps.compute(scheduler="sync")
    with pytest.raises(ValueError, match="reading .*missing.png failed here .* Pass image_size"):
        score_partitions(detector, [tmp_path / "missing.png"], "predict_mask")


def test_float_tiff_files_are_read_as_floats(detector, data, tmp_path):
    images = data.X_test[:3].astype(np.float32) / 255
    paths = [tmp_path / f"{i}.tif" for i in range(3)]
    for path, image in zip(paths, images):
        Image.fromarray(image).save(path)
    scores = score_partitions(detector, paths, partition_size=2).compute(scheduler="sync")
    _assert_same(scores, detector.score_samples(images))
    _assert_same(scores, detector.score_samples(data.X_test[:3]))  # the same pixels as the 8-bit images


def test_bad_arguments_are_rejected_before_any_graph(detector, data):
    X = data.X_test
    with pytest.raises(ValueError, match="method must be one of 'score_samples'.*got 'fit'"):
        score_partitions(detector, X, "fit")
    with pytest.raises(NotFittedError):
        score_partitions(UFlowDetector(**DETECTOR), X)
    for size in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="partition_size must be a positive int"):
            score_partitions(detector, X, partition_size=size)
    with pytest.raises(ValueError, match="contains no images"):
        score_partitions(detector, X[:0])
    with pytest.raises(ValueError, match="the list of image paths is empty"):
        score_partitions(detector, [])
    with pytest.raises(ValueError, match="2 dimensions"):
        score_partitions(detector, X[:, :, 0])
    with pytest.raises(ValueError, match="4-d images must be"):
        score_partitions(detector, da.from_array(np.stack([X] * 4, axis=-1)))
    with pytest.raises(ValueError, match="3 channel"):
        score_partitions(detector, np.stack([X] * 3, axis=-1))
    with pytest.raises(ValueError, match="3 channel"):
        score_partitions(detector, ["a.png"], color=True)
    with pytest.raises(ValueError, match="image_size and color apply to image file paths only"):
        score_partitions(detector, X, image_size=32)
    with pytest.raises(TypeError, match="dtype int64"):
        score_partitions(detector, X.astype(np.int64))
    with pytest.raises(TypeError, match="single path"):
        score_partitions(detector, "a.png")
    with pytest.raises(TypeError, match="holding ndarray"):
        score_partitions(detector, list(X))
    with pytest.raises(TypeError, match="has no method 'anomaly_map'"):
        score_partitions(make_pipeline(FunctionTransformer(), detector), X, "anomaly_map")


def test_missing_dask_raises_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask", None)
    with pytest.raises(ImportError, match=r"""score_partitions needs the package 'dask', which is not installed: pip install "skflow-ad\[dask\]"\."""):
        score_partitions(object(), np.zeros((2, 8, 8), np.uint8), "score_samples")
