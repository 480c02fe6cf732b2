"""Do U-Flow's KolektorSDD options carry over to other images? Generated surfaces, U-Flow only.

``benchmarks/quality_vs_anomalib.py`` chose ``base_std=0.2``,
``map_scale_weights=(1, 0.5, 0)`` and ``map_calibration="position"`` (with
``max_epochs=10``) on KolektorSDD: aligned images of one part, thin cracks.
This script fits the same three variants on the package's generated surfaces
(``skflow_ad.datasets.make_surface_train_test``: brushed, grain and woven
textures, not aligned, scratches, cracks, spots and contamination of several
sizes), same seed and random ``resnet18`` per (texture, seed) for every
variant, and prints image AUROC and pixel AUROC of each:

- ``paper``: the defaults (the paper's map, ``base_std=1``);
- ``base_std``: ``base_std=0.2`` only;
- ``all options``: ``base_std=0.2, map_scale_weights=(1, 0.5, 0), map_calibration="position"``.

All at ``--epochs`` (default 10, the KolektorSDD setting). Example (about
10 minutes on 2 cores)::

    python benchmarks/uflow_options_synthetic.py --textures brushed grain weave --seeds 0 1

Image AUROC from ``score_samples`` (the map's maximum), pixel AUROC over all
test pixels, both with ``skflow_ad.metrics``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

VARIANTS = {
    "paper": {},
    "base_std": {"base_std": 0.2},
    "all options": {"base_std": 0.2, "map_scale_weights": (1, 0.5, 0), "map_calibration": "position"},
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--textures", nargs="+", default=["brushed", "grain", "weave"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import torch

    from skflow_ad import UFlowDetector, metrics
    from skflow_ad.datasets import make_surface_train_test

    torch.set_num_threads(args.threads)
    print(f"generated surfaces, {args.image_size} px, {args.n_train} training images, 50 + 50 test images, "
          f"U-Flow resnet18 (random weights), {args.epochs} epochs, {args.threads} threads")
    print("| texture | seed | variant | image AUROC | pixel AUROC | fit (s) |")
    print("|---|---|---|---|---|---|")
    results = {name: [] for name in VARIANTS}
    for texture in args.textures:
        for seed in args.seeds:
            data = make_surface_train_test(args.n_train, 50, 50, image_size=args.image_size, texture=texture,
                                           random_state=seed)
            for name, params in VARIANTS.items():
                start = time.perf_counter()
                detector = UFlowDetector(backbone="resnet18", pretrained=False, image_size=args.image_size,
                                         max_epochs=args.epochs, random_state=seed, **params).fit(data.X_train)
                fit_seconds = time.perf_counter() - start
                scores, maps = detector.score_samples_and_anomaly_map(data.X_test)
                image = metrics.image_auroc(data.y_test, -scores)  # score_samples: higher = more normal
                pixel = metrics.pixel_auroc(data.masks_test, maps)
                results[name].append((image, pixel))
                print(f"| {texture} | {seed} | {name} | {image:.3f} | {pixel:.3f} | {fit_seconds:.1f} |", flush=True)
    for name, values in results.items():
        image, pixel = np.mean(values, axis=0)
        print(f"| **mean** | | {name} | {image:.3f} | {pixel:.3f} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
