"""Tune detector settings with GridSearchCV, training on normal images only.

``NormalOnlyKFold`` keeps anomalies out of every training fold; the scorers
read the ground truth from ``y``: here the pixel masks, so one search can
report image AUROC and AUPRO.

    python examples/grid_search_normal_only.py
"""

import numpy as np
from sklearn.model_selection import GridSearchCV

from skflow_ad import NormalOnlyKFold, UFlowDetector, make_surface_defects
from skflow_ad.model_selection import aupro_scorer, image_auroc_scorer


def main(epochs=3):
    X, y, masks = make_surface_defects(n_normal=48, n_anomalous=16, image_size=64, random_state=0)
    search = GridSearchCV(
        UFlowDetector(backbone="resnet18", pretrained=False, image_size=64, max_epochs=epochs, random_state=0),
        {"flow_steps": [2, 4], "affine_clamp": [1.0, 2.0]},
        scoring={"image_auroc": image_auroc_scorer, "aupro": aupro_scorer},
        refit=False,  # refitting would train on all of X, anomalies included: refit by hand below
        cv=NormalOnlyKFold(n_splits=2, shuffle=True, random_state=0),
    )
    search.fit(X, masks)  # masks as y: an image is anomalous when its mask has a pixel set
    results = search.cv_results_
    for params, auroc, pro in zip(results["params"], results["mean_test_image_auroc"], results["mean_test_aupro"]):
        print(f"{params}  image AUROC {auroc:.3f}  AUPRO {pro:.3f}")
    best = results["params"][int(np.argmax(results["mean_test_image_auroc"]))]
    final = UFlowDetector(backbone="resnet18", pretrained=False, image_size=64, max_epochs=epochs, random_state=0, **best)
    final.fit(X[y == 1])
    print("refitted on the normal images with", best)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
