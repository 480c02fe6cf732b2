"""Pixel masks without labels: the a-contrario (NFA) test, and a learned threshold.

The NFA test declares a pixel anomalous when the latents around it are too
unlikely under the flow's standard-normal model for fewer than ``10**nfa_log_epsilon``
false alarms to be expected per image. It needs no defect example and no
threshold tuning; ``nfa_log_epsilon`` makes it stricter (< 0) or looser (> 0).

    python examples/nfa_masks.py
"""

import numpy as np

from skflow_ad import UFlowDetector, make_surface_train_test


def main(epochs=5):
    data = make_surface_train_test(n_train=80, n_test_normal=10, n_test_anomalous=10, image_size=64, random_state=0)
    detector = UFlowDetector(backbone="resnet18", pretrained=False, image_size=64, max_epochs=epochs, random_state=0)
    detector.fit(data.X_train)
    truth = data.masks_test
    for name, masks in [
        ("NFA < 1", detector.predict_mask(data.X_test)),
        ("NFA < 100", detector.set_params(nfa_log_epsilon=2.0).predict_mask(data.X_test)),
        ("threshold", detector.predict_mask(data.X_test, method="threshold")),
    ]:
        print(f"{name:10s} defect pixels found {masks[truth].mean():6.1%}   normal pixels flagged {masks[~truth].mean():.2%}")
    # The log10 NFA map itself (lower = more anomalous; the mask is log_nfa < nfa_log_epsilon):
    log_nfa = detector.log_nfa_map(data.X_test)
    anomalous = data.y_test == -1
    print(f"lowest log10 NFA per image: defective {np.median(log_nfa[anomalous].min(axis=(1, 2))):.2f} (median), "
          f"good {np.median(log_nfa[~anomalous].min(axis=(1, 2))):.2f} (median)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
