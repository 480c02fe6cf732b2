"""Pixel masks and defect regions without labels: tree NFA, block NFA, learned threshold.

The a-contrario (NFA) tests declare a region anomalous when its latents are
too unlikely under the flow's standard-normal model for more than
``10**nfa_log_epsilon`` false detections to be expected per normal image. They
need no defect example and no threshold tuning; ``nfa_log_epsilon`` makes them
stricter (< 0) or looser (> 0). The learned threshold flags anomaly-map values
above a quantile of the training maps.

    python examples/nfa_masks.py
"""

import numpy as np

from skflow_ad import UFlowDetector, make_surface_train_test
from skflow_ad.metrics import mean_iou, region_precision_recall


def main(epochs=5):
    data = make_surface_train_test(n_train=80, n_test_normal=10, n_test_anomalous=10, image_size=64, random_state=0)
    detector = UFlowDetector(backbone="resnet18", pretrained=False, image_size=64, max_epochs=epochs, random_state=0)
    detector.fit(data.X_train)
    truth, normal = data.masks_test, data.y_test == 1
    for name, masks in [
        ("tree NFA < 1", detector.predict_mask(data.X_test)),  # the default mask_method
        ("block NFA < 1", detector.predict_mask(data.X_test, method="block_nfa")),
        ("block NFA < 100", detector.set_params(nfa_log_epsilon=2.0).predict_mask(data.X_test, method="block_nfa")),
        ("threshold", detector.predict_mask(data.X_test, method="threshold")),
    ]:
        found = region_precision_recall(truth, masks)
        print(f"{name:16s} defect pixels found {masks[truth].mean():6.1%}   normal pixels flagged "
              f"{masks[normal].mean():.2%}   false regions per normal image {found.false_regions_per_normal_image:.2f}"
              f"   mean IoU {mean_iou(truth, masks):.3f}")
    detector.set_params(nfa_log_epsilon=0.0)
    # The log10 NFA map itself (lower = more anomalous; the mask is log_nfa < nfa_log_epsilon):
    for method in ("tree_nfa", "block_nfa"):
        lowest = detector.log_nfa_map(data.X_test, method=method).min(axis=(1, 2))
        print(f"{method}: lowest log10 NFA per image, median: defective {np.median(lowest[~normal]):.2f}, "
              f"good {np.median(lowest[normal]):.2f}")
    # Regions, the unit of an inspection decision: area, box, centroid, peak score, significance.
    regions = detector.set_params(min_region_area=4).predict_regions(data.X_test, method="threshold")
    image = int(np.argmax([len(r) for r in regions]))
    for region in regions[image][:3]:
        print(f"image {image}: region of {region.area} px at rows/cols {region.bbox}, peak {region.max_anomaly:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
