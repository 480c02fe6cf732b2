"""How optimistic is choosing U-Flow options on KolektorSDD's test images? A split-half check.

``quality_vs_anomalib.py`` reports every variant on all 149 test images, and the
variants worth reporting were found by looking at those same numbers. This
script measures what that choice costs: it splits the test images into two
halves (stratified by label, ``--splits`` random splits), picks on one half
the variant with the best mean of image and pixel AUROC over the seeds, and
reports that variant against anomalib on the other half; then the halves swap.
The mean held-out margin over all splits and both directions is what the
selection would have given on images it never saw.

It fits nothing: it reads the runs ``quality_vs_anomalib.py`` cached under
``--results`` (run that script first for anomalib and for each variant, with
the same ``--seeds``, ``--epochs`` and ``--image-size``). Each variant is
``LABEL=JSON`` with the JSON as passed to ``--ours-params``. Example (the
variants of docs/benchmarks.md, 5 December 2026)::

    python benchmarks/quality_selection.py --results /work/quality \\
        --variant '5 epochs={"base_std": 0.2, "map_scale_weights": [1, 0.5, 0], "map_calibration": "position", "max_epochs": 5}' \\
        --variant '10 epochs={"base_std": 0.2, "map_scale_weights": [1, 0.5, 0], "map_calibration": "position", "max_epochs": 10}'
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_vs_anomalib as qva  # noqa: E402  (this directory's script, for its cache names)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", required=True, help="the --results folder of quality_vs_anomalib.py")
    p.add_argument("--variant", action="append", required=True, metavar="LABEL=JSON",
                   help="a variant of our side: a label and its --ours-params JSON; repeat for each")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--image-size", nargs=2, type=int, default=[208, 80], metavar=("H", "W"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--splits", type=int, default=10, help="random stratified splits into halves")
    return p.parse_args(argv)


def cached_run(common, side, seed, ours_params="{}"):
    """``(scores, maps)`` of one cached run of ``quality_vs_anomalib.py``."""
    import numpy as np

    args = qva.parse_args([*common, "--ours-params", ours_params])
    path = Path(args.results) / f"{qva.run_key(args, side, seed)}.npz"
    if not path.exists():
        raise SystemExit(f"no cached run {path.name}: run quality_vs_anomalib.py for {side} "
                         f"{'' if side == 'anomalib' else ours_params} seed {seed} first.")
    arrays = np.load(path)
    return arrays["scores"], arrays["maps"]


def stratified_halves(labels, rng):
    """Two index arrays, each with half of each label's images."""
    import numpy as np

    first = []
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        first.extend(members[: len(members) // 2])
    first = np.sort(np.asarray(first))
    return first, np.setdiff1d(np.arange(len(labels)), first)


def main(argv=None):
    import numpy as np

    from skflow_ad.metrics import image_auroc, pixel_auroc

    args = parse_args(argv)
    common = ["--results", args.results, "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
              "--image-size", *map(str, args.image_size)]
    variants = dict(v.split("=", 1) for v in args.variant)
    data = dict(np.load(qva.data_file(qva.parse_args(common))))
    labels, masks = data["y_test"], data["masks_test"]
    runs = {"anomalib": {s: cached_run(common, "anomalib", s) for s in args.seeds}}
    for label, params in variants.items():
        runs[label] = {s: cached_run(common, "ours", s, params) for s in args.seeds}

    def quality(name, index):
        """Mean over seeds of (image AUROC, pixel AUROC) on the test images ``index``."""
        values = [(image_auroc(labels[index], scores[index]), pixel_auroc(masks[index], maps[index]))
                  for scores, maps in runs[name].values()]
        return np.mean(values, axis=0)

    everything = np.arange(len(labels))
    print(f"{len(labels)} test images ({int((labels == -1).sum())} defective), seeds {args.seeds}")
    print("| variant | image AUROC, all | pixel AUROC, all |")
    print("|---|---|---|")
    for name in runs:
        image, pixel = quality(name, everything)
        print(f"| {name} | {image:.3f} | {pixel:.3f} |")

    rng = np.random.RandomState(0)
    margins, chosen = [], []
    for _ in range(args.splits):
        halves = stratified_halves(labels, rng)
        for select, report in (halves, halves[::-1]):
            best = max(variants, key=lambda name: quality(name, select).sum())
            margins.append(quality(best, report) - quality("anomalib", report))
            chosen.append(best)
    margins = np.asarray(margins)
    print(f"\nchosen on one half, reported on the other ({args.splits} splits x 2 directions):")
    for name in variants:
        print(f"  {name}: chosen {chosen.count(name)} times")
    print(f"held-out margin over anomalib, mean (min .. max): image AUROC {margins[:, 0].mean():+.3f} "
          f"({margins[:, 0].min():+.3f} .. {margins[:, 0].max():+.3f}), pixel AUROC {margins[:, 1].mean():+.3f} "
          f"({margins[:, 1].min():+.3f} .. {margins[:, 1].max():+.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
