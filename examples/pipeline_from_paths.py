"""A Pipeline that starts from image file paths: ImageFileLoader, then a detector.

    python examples/pipeline_from_paths.py
"""

import tempfile
from pathlib import Path

from PIL import Image
from sklearn.pipeline import make_pipeline

from skflow_ad import ImageFileLoader, UFlowDetector, make_surface_defects


def main(epochs=3):
    X, y, _ = make_surface_defects(n_normal=40, n_anomalous=8, image_size=64, random_state=1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, image in enumerate(X):
            path = Path(tmp) / f"part_{i:03d}.png"
            Image.fromarray(image).save(path)
            paths.append(str(path))
        normal_paths = [p for p, label in zip(paths, y) if label == 1]

        pipeline = make_pipeline(
            ImageFileLoader(image_size=64),
            UFlowDetector(backbone="resnet18", pretrained=False, image_size=64, max_epochs=epochs, random_state=0),
        )
        pipeline.fit(normal_paths[:32])
        scores = pipeline.score_samples(paths[32:])  # higher = more normal
        for path, score, label in zip(paths[32:], scores, y[32:]):
            print(f"{Path(path).name}  score {score:+.3f}  {'normal' if label == 1 else 'DEFECT'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
