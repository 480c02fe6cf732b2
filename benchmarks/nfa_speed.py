"""Time the NFA masks per image against the network pass, on one CPU run.

Standard-normal latents of the shapes U-Flow (resnet18) produces at 256 px
(84 @ 64x64, 80 @ 32x32, 128 @ 16x16) and at 128 px, and CS-Flow-like ones
(304 @ 8x8, 4x4, 2x2), in batches of ``--images``:

- ``skflow_ad.nfa.tree_log_nfa`` (from the energies) and ``block_log_nfa``
  (from the exceedance counts; default and ``high_precision``), output at 4x
  the finest latent side; the statistics themselves (``latent_statistics``)
  are timed apart, since a network head computes them;
- the max-tree construction alone, with higra (what ``tree_log_nfa`` uses)
  and with scikit-image's ``max_tree`` (when installed; "error" where it
  raises, as 0.26 does on 2 x 2 maps), to justify the choice of library;
- unless ``--skip-network``: ``UFlowDetector(backbone="resnet18",
  pretrained=False, image_size=256).score_samples`` on the same number of
  images (backbone + flow + scores; fitted for one epoch on 16 images first),
  the network pass the masks are compared with.

Times are the best of ``--repeats`` runs, in ms per image. Only the ratios
from one run mean anything on a shared machine. Example::

    python benchmarks/nfa_speed.py --images 16 --repeats 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np

SHAPES = {
    "U-Flow 256 px": [(84, 64), (80, 32), (128, 16)],
    "U-Flow 128 px": [(84, 32), (80, 16), (128, 8)],
    "CS-Flow-like": [(304, 8), (304, 4), (304, 2)],
}


def best_time(function, repeats):
    function()  # warm-up (caches, tables)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def network_ms_per_image(n_images, repeats):
    import torch

    from skflow_ad import UFlowDetector, make_surface_train_test

    torch.set_num_threads(2)
    data = make_surface_train_test(n_train=16, n_test_normal=n_images, n_test_anomalous=0, image_size=256,
                                   random_state=0)
    detector = UFlowDetector(backbone="resnet18", pretrained=False, image_size=256, max_epochs=1, batch_size=8,
                             random_state=0).fit(data.X_train)
    return 1000 * best_time(lambda: detector.score_samples(data.X_test), repeats) / n_images


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="images per batch (default: 16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs, best kept (default: 3)")
    parser.add_argument("--skip-network", action="store_true", help="do not time the U-Flow network pass")
    args = parser.parse_args(argv)

    import higra as hg

    from skflow_ad.nfa import block_log_nfa, latent_statistics, tree_log_nfa

    try:
        from skimage.morphology import max_tree
    except ImportError:
        max_tree = None

    n = args.images
    rng = np.random.default_rng(0)
    print(f"{n} images per batch, best of {args.repeats}, ms per image")
    print(f"{'latents':15s} {'statistics':>10s} {'tree':>8s} {'block':>8s} {'block hp':>9s}"
          f" {'max-tree higra':>15s} {'max-tree skimage':>17s}")
    for name, shapes in SHAPES.items():
        latents = [rng.standard_normal((n, channels, side, side), dtype=np.float32) for channels, side in shapes]
        channels = [c for c, _ in shapes]
        size = shapes[0][1] * 4
        energies, counts = latent_statistics(latents, probability_threshold=0.9)
        times = {
            "statistics": best_time(lambda: latent_statistics(latents, probability_threshold=0.9), args.repeats),
            "tree": best_time(lambda: tree_log_nfa(energies, channels, size), args.repeats),
            "block": best_time(lambda: block_log_nfa(counts, channels, size), args.repeats),
            "block hp": best_time(lambda: block_log_nfa(counts, channels, size, high_precision=True), args.repeats),
        }
        graphs = {e.shape[1:]: hg.get_4_adjacency_graph(e.shape[1:]) for e in energies}
        times["higra"] = best_time(
            lambda: [hg.component_tree_max_tree(graphs[e.shape[1:]], image) for e in energies for image in e],
            args.repeats,
        )
        skimage_ms = "n/a"
        if max_tree is not None:
            try:
                seconds = best_time(lambda: [max_tree(image, connectivity=1) for e in energies for image in e],
                                    args.repeats)
                skimage_ms = f"{1000 * seconds / n:.2f}"
            except ValueError:  # scikit-image 0.26 raises on 2 x 2 images
                skimage_ms = "error"
        ms = {key: 1000 * value / n for key, value in times.items()}
        print(f"{name:15s} {ms['statistics']:10.2f} {ms['tree']:8.2f} {ms['block']:8.2f} {ms['block hp']:9.2f}"
              f" {ms['higra']:15.2f} {skimage_ms:>17s}", flush=True)
    if not args.skip_network:
        network_ms = network_ms_per_image(n, args.repeats)
        print(f"U-Flow resnet18 256 px score_samples (network pass): {network_ms:.1f} ms/image")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
