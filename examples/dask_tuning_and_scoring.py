"""Tune and score on a Dask cluster.

``GridSearchCV`` runs its fits on the cluster's workers through joblib's
``"dask"`` backend, then ``score_partitions`` scores a folder of image files
in parallel partitions: each task reads its own files, so only the paths are
sent to the workers. Needs ``pip install "skflow-ad[dask]"``.

This starts a local cluster of worker processes. For a real cluster, connect
to its scheduler instead, ``Client("tcp://scheduler-address:8786")``, with the
same skflow-ad version installed on the workers and the image files on storage
they can read (see "Beyond one machine: Dask" in docs/user_guide.md).

    python examples/dask_tuning_and_scoring.py
"""

import math
import tempfile
from collections import Counter
from pathlib import Path

import dask
import joblib
import numpy as np
from distributed import Client, LocalCluster, get_task_stream
from PIL import Image
from sklearn.model_selection import GridSearchCV

from skflow_ad import NormalOnlyKFold, UFlowDetector, make_surface_defects, score_partitions
from skflow_ad.metrics import image_auroc, pixel_auroc
from skflow_ad.model_selection import image_auroc_scorer


def main(epochs=3, n_workers=2):
    settings = dict(backbone="resnet18", pretrained=False, image_size=64, max_epochs=epochs, random_state=0)
    X, y, _ = make_surface_defects(n_normal=32, n_anomalous=8, image_size=64, random_state=0)
    X_new, y_new, masks_new = make_surface_defects(n_normal=30, n_anomalous=10, image_size=64, random_state=1)

    with tempfile.TemporaryDirectory() as folder, LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster, Client(cluster) as client:
        print(f"local cluster: {n_workers} worker processes, 1 thread each")

        # 1. Tuning: each fit of the search is a task on a worker.
        search = GridSearchCV(
            UFlowDetector(**settings),
            {"flow_steps": [2, 4]},
            scoring=image_auroc_scorer,
            refit=False,  # refitting would train on the anomalies too: refit on the normal images below
            cv=NormalOnlyKFold(n_splits=2, shuffle=True, random_state=0),
            n_jobs=-1,  # with the dask backend: all the workers' threads
        )
        with get_task_stream(client) as stream, joblib.parallel_backend("dask"):
            search.fit(X, y)
        per_worker = Counter(task["worker"] for task in stream.data)
        print(f"grid search: {len(stream.data)} tasks on {len(per_worker)} workers")
        results = search.cv_results_
        for params, auroc in zip(results["params"], results["mean_test_score"]):
            print(f"  {params}  image AUROC {auroc:.3f}")
        detector = UFlowDetector(**settings, **search.best_params_).fit(X[y == 1])
        print("refitted on the normal images with", search.best_params_)

        # 2. Scoring a set of image files in partitions of 16 images.
        paths = []
        for i, image in enumerate(X_new):
            paths.append(Path(folder) / f"part_{i:03d}.png")
            Image.fromarray(image).save(paths[-1])
        scores = score_partitions(detector, paths, partition_size=16)
        maps = score_partitions(detector, paths, "anomaly_map", partition_size=16)
        print(f"scoring {len(paths)} files in {math.ceil(len(paths) / 16)} partitions: "
              f"scores {scores.shape}, maps {maps.shape} (lazy)")
        # Each result's graph holds the fitted detector once (about 15 MB here), above the size
        # at which distributed warns about large graphs: raise that threshold.
        with dask.config.set({"distributed.admin.large-graph-warning-threshold": "1GB"}):
            scores, maps = scores.compute(), maps.compute()
        print(f"image AUROC {image_auroc(y_new, -scores):.3f}, pixel AUROC {pixel_auroc(masks_new, maps):.3f}")
        print(f"same as in one process: {np.allclose(scores, detector.score_samples(X_new), rtol=1e-5)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
