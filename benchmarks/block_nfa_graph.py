"""What the block-NFA map in the exported graph costs, against computing it from the graph's counts in numpy.

``export_onnx(path, block_nfa_map=True)`` adds the ``block_log_nfa`` output
(:class:`skflow_ad.inference.BlockLogNFA`). This script fits a U-Flow
(``resnet18``, random weights, ``--image-size`` px, one epoch on 16 images),
exports it twice, without and with the map, and times on ONNX Runtime with
``--threads`` threads, per image, best of ``--repeats``, batches of
``--batch`` images:

- ``graph``: one run of the graph without the map (scores, maps, latent statistics);
- ``graph + map``: one run of the graph with the map;
- ``numpy map``: ``skflow_ad.nfa.block_log_nfa`` on the first graph's
  exceedance counts at the working size (what ``ExportedDetector.log_nfa_map``
  computes after the graph);

and checks that both maps agree. It also compares the graph's exceedance
counts and map with the detector's own (torch) ``log_nfa_map``: a latent
entry within float32 rounding of the threshold on ``z**2`` can be counted by
one and not the other. The images are random, the first with a bright
square (a strong anomaly). Example (about 2 minutes on 2 cores)::

    python benchmarks/block_nfa_graph.py --image-size 256 --batch 8 --threads 2

Only the ratios from one run mean anything on a shared machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    return parser.parse_args(argv)


def best_ms_per_image(function, repeats, n_images):
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * min(times) / n_images


def main(argv=None):
    args = parse_args(argv)
    import onnxruntime
    import torch

    from skflow_ad import UFlowDetector, nfa

    torch.set_num_threads(args.threads)
    rng = np.random.RandomState(0)
    size = args.image_size
    detector = UFlowDetector(backbone="resnet18", pretrained=False, image_size=size, max_epochs=1, batch_size=8,
                             random_state=0).fit((rng.rand(16, size, size, 3) * 255).astype(np.uint8))
    images = (rng.rand(args.batch, size, size, 3) * 255).astype(np.uint8)
    images[0, size // 5 : size // 2, size // 5 : size // 2] = 255
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    with tempfile.TemporaryDirectory() as directory:
        sessions = {
            with_map: onnxruntime.InferenceSession(
                str(detector.export_onnx(Path(directory) / f"{with_map}.onnx", block_nfa_map=with_map)), options,
                providers=["CPUExecutionProvider"])
            for with_map in (False, True)
        }
    n_scales = len(detector.latent_shapes_)
    outputs = sessions[False].run(None, {"images": images})
    counts, channels = outputs[2 + n_scales:], [shape[0] for shape in detector.latent_shapes_]

    def numpy_map():
        return nfa.block_log_nfa(counts, channels, detector.image_size_)

    graph_map = sessions[True].run(["block_log_nfa"], {"images": images})[0]
    difference = float(np.abs(graph_map - numpy_map()).max())
    with torch.no_grad():
        latents, _ = detector.flow_(detector.extract_features(images))
    threshold = nfa.chi2_threshold(detector.nfa_probability_threshold)
    torch_counts = [(z.pow(2) > threshold).sum(1).numpy() for z in latents]
    n_counts_differing = sum(int((a != b).sum()) for a, b in zip(torch_counts, counts))
    n_latent_pixels = sum(a.size for a in torch_counts)
    torch_difference = np.abs(graph_map - detector.log_nfa_map(images, "block_nfa"))
    timings = {
        "graph": best_ms_per_image(lambda: sessions[False].run(None, {"images": images}), args.repeats, args.batch),
        "graph + map": best_ms_per_image(lambda: sessions[True].run(None, {"images": images}), args.repeats,
                                         args.batch),
        "numpy map": best_ms_per_image(numpy_map, args.repeats, args.batch),
    }
    print(f"U-Flow resnet18 {size} px, latents {detector.latent_shapes_}, batch {args.batch}, {args.threads} threads, "
          f"ONNX Runtime {onnxruntime.__version__}; best of {args.repeats}")
    print("| what | ms / image |")
    print("|---|---|")
    for name, value in timings.items():
        print(f"| {name} | {value:.2f} |")
    print(f"map in the graph costs {timings['graph + map'] - timings['graph']:.2f} ms / image "
          f"({timings['graph + map'] / timings['graph']:.3f}x the graph); numpy map {timings['numpy map']:.2f} ms / "
          f"image; largest difference of the two maps {difference:.2e}")
    print(f"against the detector (torch): exceedance counts differ at {n_counts_differing} of {n_latent_pixels} "
          f"latent pixels; the map differs by more than 1e-4 at {(torch_difference > 1e-4).mean():.4%} of the pixels, "
          f"by up to {torch_difference.max():.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
