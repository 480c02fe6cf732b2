"""Exported models vs the eager torch path: throughput of score + map, and how close the numbers are.

For each detector (U-Flow/resnet18, CS-Flow), in one process and one run, on the
same random images: ``score_samples_and_anomaly_map`` of the fitted detector
(eager torch), and of :class:`skflow_ad.deploy.ExportedDetector` on the model
exported by ``export_onnx`` run by ONNX Runtime, and converted to OpenVINO IR
with FP32 and FP16 weights (OpenVINO computing in FP32). Images/s are medians
over ``--repeats`` interleaved repetitions (eager, onnxruntime, openvino
FP32, FP16, eager...), so that load from other processes hits all alike; the
ratios are to the eager path. The agreement columns are the largest relative
score difference and the largest absolute map difference to the eager path.

Backbones have random weights (``pretrained=False``, 1 epoch on random
images): weights do not change the cost of any operation measured here.

Example (the issue's setting: 256 px, batch 8, 2 threads)::

    python benchmarks/deploy_speed.py --image-size 256 --batch-size 8 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_anomalib import make_images, our_detector  # noqa: E402  (same images, same detectors)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=["uflow", "csflow"], choices=["uflow", "csflow"])
    p.add_argument("--image-size", type=int, default=256, help="square working size in px (the issue: 256)")
    p.add_argument("--batch-size", type=int, default=8, help="inference batch size (the issue: 8)")
    p.add_argument("--threads", type=int, default=2, help="torch, onnxruntime and OpenVINO threads (the issue: 2)")
    p.add_argument("--n-images", type=int, default=16, help="images scored per repetition")
    p.add_argument("--fit-images", type=int, default=8, help="images the detectors are fitted on (1 epoch)")
    p.add_argument("--csflow-hidden", type=int, default=1024, help="CS-Flow cross_conv_hidden_channels")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repetitions; medians are reported")
    return p.parse_args(argv)


def agreement(expected, got):
    (scores, maps), (got_scores, got_maps) = expected, got
    return {
        "score_max_rel_diff": float(np.max(np.abs(got_scores - scores) / np.abs(scores))),
        "map_max_abs_diff": float(np.max(np.abs(np.asarray(got_maps, np.float64) - maps))),
        "map_max": float(np.max(np.abs(maps))),
    }


def bench(method, args, images, directory):
    from skflow_ad.deploy import ExportedDetector
    from skflow_ad.export import onnx_to_openvino

    det = our_detector(method, argparse.Namespace(image_size=args.image_size, batch_size=args.batch_size,
                                                  csflow_hidden=args.csflow_hidden), epochs=1)
    det.fit(make_images(args.fit_images, args.image_size, seed=1))
    started = time.perf_counter()
    onnx_path = det.export_onnx(directory / f"{method}.onnx")
    export_s = time.perf_counter() - started
    runners = {"eager torch": det}
    runners["onnxruntime"] = ExportedDetector(onnx_path, threads=args.threads)
    for precision in ("FP32", "FP16"):
        try:
            xml = onnx_to_openvino(onnx_path, directory / f"{method}_{precision}.xml", precision=precision)
            runners[f"openvino {precision}"] = ExportedDetector(xml, "openvino", threads=args.threads)
        except ImportError as error:
            print(f"skipping openvino: {error}", file=sys.stderr)
            break
    outputs = {name: runner.score_samples_and_anomaly_map(images) for name, runner in runners.items()}  # warm-up
    times = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, runner in runners.items():
            started = time.perf_counter()
            runner.score_samples_and_anomaly_map(images)
            times[name].append(time.perf_counter() - started)
    eager = len(images) / statistics.median(times["eager torch"])
    rows = []
    for name in runners:
        speed = len(images) / statistics.median(times[name])
        rows.append({"method": method, "runtime": name, "images_per_s": round(speed, 3),
                     "ratio_to_eager": round(speed / eager, 3), **agreement(outputs["eager torch"], outputs[name])})
    return rows, export_s, onnx_path.stat().st_size


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    images = make_images(args.n_images, args.image_size, seed=0)
    print(f"# {args.n_images} images {args.image_size} px, batch {args.batch_size}, {args.threads} threads, "
          f"{args.repeats} repeats, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")
    all_rows = []
    with tempfile.TemporaryDirectory() as directory:
        for method in args.methods:
            rows, export_s, size = bench(method, args, images, Path(directory))
            print(f"## {method}: export_onnx {export_s:.0f} s, {size / 1e6:.0f} MB")
            print(f"{'runtime':<14} {'img/s':>7} {'x eager':>8} {'score rel diff':>15} {'map abs diff':>13}")
            for row in rows:
                print(f"{row['runtime']:<14} {row['images_per_s']:>7.2f} {row['ratio_to_eager']:>8.2f} "
                      f"{row['score_max_rel_diff']:>15.1e} {row['map_max_abs_diff']:>13.1e}")
            all_rows += rows
    print(json.dumps(all_rows))


if __name__ == "__main__":
    main()
