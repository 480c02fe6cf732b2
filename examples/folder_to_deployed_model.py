"""From a folder of images to a deployed model: load, fit, evaluate, save, reload, score.

Uses an MVTec-AD-style folder (``train/good``, ``test/<type>``, ``ground_truth/<type>``).
Without an argument, a small synthetic one is written to a temporary folder first.

    python examples/folder_to_deployed_model.py [MVTEC_ROOT]
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

import skflow_ad
from skflow_ad import UFlowDetector, load_mvtec_folder, make_surface_train_test
from skflow_ad.metrics import aupro, image_auroc, pixel_auroc


def write_synthetic_mvtec(root):
    """A small MVTec-style folder of generated surfaces (PNG images and masks)."""
    data = make_surface_train_test(n_train=60, n_test_normal=10, n_test_anomalous=10, image_size=64, random_state=0)
    for i, image in enumerate(data.X_train):
        path = root / "train" / "good" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
    for i, (image, label, mask) in enumerate(zip(data.X_test, data.y_test, data.masks_test)):
        kind = "good" if label == 1 else "defect"
        path = root / "test" / kind / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        if kind == "defect":
            mask_path = root / "ground_truth" / kind / f"{i:03d}_mask.png"
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)


def main(argv=None, epochs=5):
    argv = sys.argv[1:] if argv is None else argv
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(argv[0]) if argv else Path(tmp) / "surfaces"
        if not argv:
            write_synthetic_mvtec(root)
        data = load_mvtec_folder(root, image_size=64)
        print(f"{len(data.X_train)} training images, {len(data.X_test)} test images")

        detector = UFlowDetector(backbone="resnet18", pretrained=False, image_size=64, max_epochs=epochs, random_state=0)
        detector.fit(data.X_train)

        scores, maps = detector.score_samples_and_anomaly_map(data.X_test)
        anomaly_scores = -scores
        print(f"image AUROC {image_auroc(data.y_test, anomaly_scores):.3f}  "
              f"pixel AUROC {pixel_auroc(data.masks_test, maps):.3f}  AUPRO {aupro(data.masks_test, maps):.3f}")

        model_path = Path(tmp) / "model.skad"
        detector.save(model_path)  # one file, backbone weights included; loading unpickles nothing
        deployed = skflow_ad.load(model_path)
        assert np.array_equal(deployed.score_samples(data.X_test), -anomaly_scores)
        print(f"saved {model_path.stat().st_size / 1e6:.1f} MB; reloaded model gives identical scores")
        print("predictions of the deployed model:", deployed.predict(data.X_test[:8]))
        # the same from the shell: skflow-ad fit ROOT -o model.skad ; skflow-ad score model.skad ROOT -o results
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
