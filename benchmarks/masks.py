"""Judge the three mask methods (tree NFA, block NFA, learned threshold) on data with true masks.

For each dataset a U-Flow detector is fitted (or loaded with ``--models``),
then every method of ``skflow_ad.prediction.MASK_METHODS`` segments the test
images and the script prints, per method:

- **defect recall**: share of the true defect pixels flagged;
- **normal px**: share of the pixels of the *normal* test images flagged;
- **false regions / normal image**: connected predicted regions per normal
  test image (``metrics.region_precision_recall``);
- **region recall / precision**: true defect regions touched by a predicted
  region, predicted regions touching a defect;
- **mean IoU** over the anomalous images (``metrics.mean_iou``, as the U-Flow
  paper reports its masks) and with the normal images included (the authors'
  evaluation script averages over all test images);
- **mask ms / image**: the time of what ``predict_mask`` computes after the
  network, on the same latents: ``nfa.tree_log_nfa`` from the energies,
  ``nfa.block_log_nfa`` from the exceedance counts (``nfa.latent_statistics``),
  the resized anomaly maps against ``pixel_threshold_``; and the network pass
  itself (``score_samples_and_anomaly_map``), timed in the same run.

Datasets:

- ``demo``: the settings of ``examples/demo.py`` (generated surfaces, 200
  training images of 64 px, 50 normal and 50 anomalous test images, U-Flow
  with a random resnet18 at 128 px, 15 epochs, seed 0);
- ``ksdd``: ``../shared/data/ksdd`` at the settings of ``benchmarks/ksdd.py``
  (320 x 128, 20 epochs, random resnet18, seed 0); skipped when absent.

Also prints, per dataset, the lowest log10 NFA of each normal test image
(median and minimum over images) for both NFA methods: how far the normal
images are from a detection; and a row for the tree test with the number of
tests counted per region size (``skflow_ad.nfa.log_nfa(..., count="per_size")``
on the latents, ``flow_(extract_features(X))``), which keeps the same
guarantee under the null model but does not pay the paper's 0.61 decades per
latent pixel of the grid: how far the latents of *normal* images are from the
null model shows there. Example::

    python benchmarks/masks.py --datasets demo ksdd --save-models /tmp/mask_models

Only ratios from one run mean anything on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

DEMO = dict(n_train=200, n_test_normal=50, n_test_anomalous=50, image_size=64, random_state=0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", choices=["demo", "ksdd"], default=["demo", "ksdd"])
    p.add_argument("--data", default=None, help="KolektorSDD folder (default: ../shared/data/ksdd)")
    p.add_argument("--models", default=None, help="folder of <dataset>.skad models to load instead of fitting")
    p.add_argument("--save-models", default=None, help="folder to save the fitted <dataset>.skad models to")
    p.add_argument("--log-epsilon", type=float, nargs="+", default=[0.0],
                   help="nfa_log_epsilon values to evaluate for the NFA methods (default: 0)")
    p.add_argument("--uflow-params", type=json.loads, default={}, metavar="JSON",
                   help='other UFlowDetector parameters for both datasets, e.g. \'{"feature_normalization": "layer"}\'')
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    return p.parse_args(argv)


def demo_data_and_detector():
    from skflow_ad import UFlowDetector, make_surface_train_test

    data = make_surface_train_test(**DEMO)
    detector = UFlowDetector(backbone="resnet18", pretrained=False, image_size=128, max_epochs=15,
                             batch_size=16, random_state=0)
    return data.X_train, data.X_test, data.y_test, data.masks_test, detector


def ksdd_data_and_detector(folder):
    import ksdd

    from skflow_ad.datasets import load_mvtec_folder

    args = ksdd.parse_args(["--data", str(folder)])
    detector, size, _ = ksdd.make_detector("uflow", args, pretrained=False)
    data = load_mvtec_folder(folder, image_size=size, color=False)
    return data.X_train, data.X_test, data.y_test, data.masks_test, detector


def fitted(name, X_train, detector, args):
    import skflow_ad

    detector.set_params(**args.uflow_params)
    if args.models:
        path = Path(args.models) / f"{name}.skad"
        print(f"[{name}] loading {path}", flush=True)
        return skflow_ad.load(path)
    start = time.perf_counter()
    detector.fit(X_train)
    print(f"[{name}] fitted in {time.perf_counter() - start:.0f} s, {detector.n_iter_} epochs", flush=True)
    if args.save_models:
        Path(args.save_models).mkdir(parents=True, exist_ok=True)
        detector.save(Path(args.save_models) / f"{name}.skad")
    return detector


def best_of(function, repeats=2):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def judge(masks_true, masks_pred, y_test):
    from skflow_ad.metrics import mean_iou, region_precision_recall

    masks_true = np.asarray(masks_true, dtype=bool)
    normal = y_test == 1
    regions = region_precision_recall(masks_true, masks_pred)
    return dict(
        recall=masks_pred[masks_true].mean(),
        normal_px=masks_pred[normal].mean(),
        false_regions=regions.false_regions_per_normal_image,
        region_recall=regions.recall,
        region_precision=regions.precision,
        miou=mean_iou(masks_true, masks_pred),
        miou_all=mean_iou(masks_true, masks_pred, include_normal=True),
    )


def run(name, X_train, X_test, y_test, masks_true, detector, args):
    from skflow_ad.prediction import MASK_METHODS, NFA_METHODS

    det = fitted(name, X_train, detector, args)
    n = len(X_test)
    network_s, _ = best_of(lambda: det.score_samples_and_anomaly_map(X_test))
    mask_seconds = time_masks(det, X_test)
    print(f"[{name}] {n} test images ({int((y_test == -1).sum())} anomalous), working size "
          f"{det.image_size_[0]}x{det.image_size_[1]}, network pass {1e3 * network_s / n:.1f} ms/image", flush=True)
    rows = []
    for method in MASK_METHODS:
        epsilons = args.log_epsilon if method in NFA_METHODS else [None]
        for log_epsilon in epsilons:
            if log_epsilon is not None:
                det.set_params(nfa_log_epsilon=log_epsilon)
            masks = det.predict_mask(X_test, method=method)
            row = dict(method=method if log_epsilon in (None, 0.0) else f"{method} (log eps {log_epsilon:g})")
            row.update(judge(masks_true, masks, y_test))
            row["mask_ms"] = 1e3 * mask_seconds[method] / n
            rows.append(row)
    det.set_params(nfa_log_epsilon=0.0)
    per_size = per_size_tree_log_nfa(det, X_test)
    for log_epsilon in args.log_epsilon:
        row = dict(method="tree_nfa, per-size count" + ("" if log_epsilon == 0 else f" (log eps {log_epsilon:g})"))
        row.update(judge(masks_true, per_size < log_epsilon, y_test))
        row["mask_ms"] = 1e3 * mask_seconds["per_size"] / n
        rows.append(row)
    print(f"\n{name}: masks of the test images, network pass {1e3 * network_s / n:.1f} ms/image")
    print("| method | defect recall | normal px | false regions / normal image | region recall | "
          "region precision | mean IoU (anomalous) | mean IoU (all) | mask ms / image |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['recall']:.1%} | {r['normal_px']:.3%} | {r['false_regions']:.2f} | "
              f"{r['region_recall']:.2f} | {r['region_precision']:.2f} | {r['miou']:.3f} | {r['miou_all']:.3f} | "
              f"{'-' if np.isnan(r['mask_ms']) else format(r['mask_ms'], '.1f')} |")
    normal = np.flatnonzero(y_test == 1)
    maps = {method: det.log_nfa_map(X_test[normal], method=method) for method in NFA_METHODS}
    maps["tree_nfa, per-size count"] = per_size[normal]
    for method, log_nfa in maps.items():
        lowest = np.array([m.min() for m in log_nfa])
        print(f"{name}, {method}: lowest log10 NFA per normal test image: median {np.median(lowest):.2f}, "
              f"minimum {lowest.min():.2f} (a detection needs < {det.nfa_log_epsilon:g})")
    print(flush=True)


def latents_of(det, X, batch_size=16):
    """The flow's latents of ``X``, finest first, each ``(n, C_s, h_s, w_s)`` float32."""
    import torch

    parts = []
    for start in range(0, len(X), batch_size):
        with torch.inference_mode():
            latents, _ = det.flow_(det.extract_features(X[start : start + batch_size]))
        parts.append([z.float().cpu().numpy() for z in latents])
    return [np.concatenate(scale) for scale in zip(*parts)]


def per_size_tree_log_nfa(det, X):
    """Tree log10 NFA with the per-size count, ``(n, H, W)`` at the input size (one size for all)."""
    from skflow_ad import nfa

    return nfa.log_nfa(latents_of(det, X), X.shape[1:3], method="tree", count="per_size")


def time_masks(det, X):
    """Seconds for all of ``X`` of the mask computations after the network, per method."""
    from skflow_ad import nfa
    from skflow_ad.resample import resize_maps

    latents = latents_of(det, X)
    channels = [z.shape[1] for z in latents]
    size = X.shape[1:3]
    energies, counts = nfa.latent_statistics(latents, det.nfa_probability_threshold)
    working_maps = np.stack([resize_maps(m[None], det.image_size_)[0] for m in det.anomaly_map(X)])
    block = dict(window_size=det.nfa_window_size, probability_threshold=det.nfa_probability_threshold,
                 high_precision=det.nfa_high_precision)
    return {
        "tree_nfa": best_of(lambda: nfa.tree_log_nfa(energies, channels, size))[0],
        "block_nfa": best_of(lambda: nfa.block_log_nfa(counts, channels, size, **block))[0],
        "threshold": best_of(lambda: resize_maps(working_maps, size) > det.pixel_threshold_)[0],
        "per_size": best_of(lambda: nfa.tree_log_nfa(energies, channels, size, count="per_size"))[0],
    }


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    for name in args.datasets:
        if name == "demo":
            run(name, *demo_data_and_detector(), args)
            continue
        folder = Path(args.data) if args.data else HERE.parent.parent / "shared" / "data" / "ksdd"
        if not folder.is_dir():
            print(f"[ksdd] skipped: {folder} is not a folder")
            continue
        run(name, *ksdd_data_and_detector(folder), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
