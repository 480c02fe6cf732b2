"""Benchmark U-Flow and CS-Flow on the real KolektorSDD dataset (MVTec-style layout).

Fits each detector on ``train/good`` and reports image AUROC, pixel AUROC and
AUPRO on ``test`` together with fit and predict times. Example::

    python benchmarks/ksdd.py --data ../shared/data/ksdd --image-size 320 128 \
        --epochs 20 --detectors uflow csflow --pretrained no

``--pretrained no`` (default) uses random backbone weights, which needs no
network; ``yes`` lets timm download ImageNet weights (a failure is reported
and the detector skipped); a file path loads a state dict (for both detectors
only if it fits both backbones) and a folder path loads ``<backbone>.pth`` (or
``.safetensors``) from it for each detector (``resnet18.pth``,
``tf_efficientnet_b5.aa_in1k.pth``, the timm name with its weights tag).

``--csflow-map-modes all max`` fits CS-Flow once per anomaly-map mode (the mode
is fixed at fit time because the pixel threshold is learned on its maps).

Pixel metrics are computed at the working resolution ``--image-size`` (the
masks are resized with nearest-neighbour interpolation).

``--runtimes`` scores the same fitted detector again on other inference paths
and reports their metrics next to the eager torch row: ``bf16`` (bfloat16
autocast of the eager path), ``onnxruntime`` (the ``export_onnx`` model),
``openvino-fp32``, ``openvino-fp16`` (FP16 weights) and ``openvino-int8``
(NNCF's INT8 extractor, calibrated on the training images), e.g.::

    python benchmarks/ksdd.py --detectors uflow --runtimes bf16 onnxruntime openvino-fp32 \
        openvino-fp16 openvino-int8
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "ksdd"
BACKBONES = {"uflow": "resnet18", "csflow": "tf_efficientnet_b5.aa_in1k"}  # = features.CSFLOW_BACKBONE
#: ``--runtimes`` choices: the variants of benchmarks/compare_anomalib.py that change the numbers or the runtime.
RUNTIME_VARIANTS = ["bf16", "onnxruntime", "openvino-fp32", "openvino-fp16", "openvino-int8"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="KolektorSDD folder (MVTec layout)")
    p.add_argument("--image-size", nargs=2, type=int, default=[320, 128], metavar=("H", "W"),
                   help="working resolution; U-Flow/resnet18 needs both divisible by 16, CS-Flow both >= 128")
    p.add_argument("--csflow-image-size", nargs=2, type=int, default=None, metavar=("H", "W"),
                   help="CS-Flow's own working resolution (default: --image-size)")
    p.add_argument("--epochs", type=int, default=20, help="max epochs for every detector")
    p.add_argument("--uflow-epochs", type=int, default=None, help="override --epochs for U-Flow")
    p.add_argument("--csflow-epochs", type=int, default=None, help="override --epochs for CS-Flow")
    p.add_argument("--detectors", nargs="+", choices=["uflow", "csflow"], default=["uflow", "csflow"])
    p.add_argument("--pretrained", default="no", help="no | yes | PATH (file or folder of <backbone>.pth)")
    p.add_argument("--uflow-lr", type=float, default=1e-3, help="U-Flow learning rate (detector default 1e-3)")
    p.add_argument("--uflow-feature-normalization", default=None,
                   help="U-Flow feature_normalization (default: the detector's)")
    p.add_argument("--csflow-feature-normalizations", nargs="+", choices=["channel", "position"],
                   default=["channel"], help="CS-Flow feature_normalization(s), one fit each (default: channel)")
    p.add_argument("--csflow-lr", type=float, default=2e-4,
                   help="CS-Flow learning rate (paper/detector default 2e-4)")
    p.add_argument("--csflow-hidden", type=int, default=128,
                   help="CS-Flow cross-convolution hidden channels (paper: 1024, 275M flow parameters)")
    p.add_argument("--csflow-map-modes", nargs="+", choices=["all", "max"], default=["all"],
                   help="CS-Flow map_mode(s), one fit each: all (product over scales, the default) "
                        "or max (finest scale only, as the authors localise)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-iter-no-change", type=int, default=10, help="early-stopping patience (epochs)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--runtimes", nargs="+", default=[], choices=RUNTIME_VARIANTS,
                   help="also score the fitted detector on these inference paths (module doc)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def resolve_pretrained(option, detector):
    """The ``pretrained`` argument for one detector, or raise FileNotFoundError."""
    low = option.lower()
    if low in ("no", "false", "0"):
        return False
    if low in ("yes", "true", "1"):
        return True
    path = Path(option).expanduser()
    if path.is_dir():
        for suffix in (".pth", ".pt", ".safetensors"):
            candidate = path / (BACKBONES[detector] + suffix)
            if candidate.is_file():
                return str(candidate)
        raise FileNotFoundError(f"no {BACKBONES[detector]}.pth/.pt/.safetensors in folder {path}")
    if path.is_file():
        return str(path)
    raise FileNotFoundError(f"--pretrained {option!r}: not 'no', 'yes', a file or a folder")


def make_detector(name, args, pretrained, map_mode="all", csflow_normalization="channel"):
    from skflow_ad import CSFlowDetector, UFlowDetector

    common = dict(pretrained=pretrained, batch_size=args.batch_size, n_iter_no_change=args.n_iter_no_change,
                  device=args.device, random_state=args.seed, verbose=False)
    if name == "uflow":
        epochs = args.uflow_epochs or args.epochs
        size = tuple(args.image_size)
        det = UFlowDetector("resnet18", image_size=size, max_epochs=epochs, learning_rate=args.uflow_lr, **common)
        if args.uflow_feature_normalization:
            det.set_params(feature_normalization=args.uflow_feature_normalization)
        settings = (f"resnet18 {size[0]}x{size[1]} ep<={epochs} lr={args.uflow_lr:g} steps=4 "
                    f"{det.feature_normalization}")
    else:
        epochs = args.csflow_epochs or args.epochs
        size = tuple(args.csflow_image_size or args.image_size)
        det = CSFlowDetector(image_size=size, max_epochs=epochs, learning_rate=args.csflow_lr,
                             cross_conv_hidden_channels=args.csflow_hidden, map_mode=map_mode,
                             feature_normalization=csflow_normalization, **common)
        settings = (f"effnet-b5 {size[0]}x{size[1]} ep<={epochs} lr={args.csflow_lr:g} "
                    f"hidden={args.csflow_hidden} blocks=4 map={map_mode} {csflow_normalization}")
    return det, size, settings


def run_one(name, args, data_cache, map_mode="all", csflow_normalization="channel"):
    import numpy as np

    from skflow_ad.datasets import load_mvtec_folder
    from skflow_ad.features import PretrainedWeightsError
    try:
        pretrained = resolve_pretrained(args.pretrained, name)
    except FileNotFoundError as exc:
        print(f"[{name}] skipped: {exc}", flush=True)
        return None
    det, size, settings = make_detector(name, args, pretrained, map_mode, csflow_normalization)
    if size not in data_cache:
        t = time.perf_counter()
        data_cache[size] = load_mvtec_folder(args.data, image_size=size, color=False)
        print(f"[data] loaded at {size[0]}x{size[1]} in {time.perf_counter() - t:.1f} s", flush=True)
    data = data_cache[size]

    print(f"[{name}] fitting: {settings}, pretrained={pretrained!r}", flush=True)
    t = time.perf_counter()
    try:
        det.fit(data.X_train)
    except (PretrainedWeightsError, FileNotFoundError, RuntimeError) as exc:
        if pretrained is False:
            raise
        print(f"[{name}] skipped: could not load pretrained weights: {type(exc).__name__}: {exc}", flush=True)
        return None
    fit_time = time.perf_counter() - t
    n_params = sum(p.numel() for p in det.flow_.parameters())
    print(f"[{name}] fit {fit_time:.1f} s, {det.n_iter_} epochs, flow {n_params / 1e6:.2f}M params, "
          f"best NLL/dim {det.best_loss_:.4f}, loss curve {np.round(det.loss_curve_, 4).tolist()}", flush=True)

    result = dict(detector=name, settings=settings, epochs=det.n_iter_, fit_time=fit_time,
                  **evaluate(det, data))
    print(f"[{name}] done: image AUROC {result['image_auroc']:.3f}, pixel AUROC {result['pixel_auroc']:.3f}, "
          f"AUPRO {result['aupro']:.3f}, predict {result['predict_time']:.1f} s", flush=True)
    results = [result]
    if args.runtimes:
        import tempfile

        from compare_anomalib import our_runners

        with tempfile.TemporaryDirectory() as directory:
            runners, costs = our_runners(det, args.runtimes, data.X_train, Path(directory), args.threads)
            print(f"[{name}] " + ", ".join(f"{step} {seconds:.1f} s" for step, seconds in costs.items()), flush=True)
            for runtime, runner in runners.items():
                row = dict(result, detector=f"{name} ({runtime})", **evaluate(runner, data))
                print(f"[{name}] {runtime}: image AUROC {row['image_auroc']:.3f}, pixel AUROC "
                      f"{row['pixel_auroc']:.3f}, AUPRO {row['aupro']:.3f}, predict {row['predict_time']:.1f} s",
                      flush=True)
                results.append(row)
    return results


def evaluate(model, data):
    """Image AUROC, pixel AUROC, AUPRO and predict time of ``model.score_samples_and_anomaly_map`` on the test set."""
    from skflow_ad.metrics import aupro, image_auroc, pixel_auroc

    started = time.perf_counter()
    scores, maps = model.score_samples_and_anomaly_map(data.X_test)
    predict_time = time.perf_counter() - started
    return dict(image_auroc=image_auroc(data.y_test, -scores), pixel_auroc=pixel_auroc(data.masks_test, maps),
                aupro=aupro(data.masks_test, maps), predict_time=predict_time,
                ips=len(data.X_test) / predict_time, n_test=len(data.X_test))


def format_table(rows):
    header = ["detector", "settings", "epochs run", "image AUROC", "pixel AUROC", "AUPRO (0.3)",
              "fit (s)", "predict (s)", "images/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lines.append(
            f"| {r['detector']} | {r['settings']} | {r['epochs']} | {r['image_auroc']:.3f} | "
            f"{r['pixel_auroc']:.3f} | {r['aupro']:.3f} | {r['fit_time']:.1f} | {r['predict_time']:.1f} | "
            f"{r['ips']:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    data_root = Path(args.data)
    if not (data_root / "train" / "good").is_dir() or not (data_root / "test").is_dir():
        print(f"KolektorSDD not found at {data_root} (expected train/good and test/ inside); "
              f"pass --data PATH. Nothing to benchmark.", file=sys.stderr)
        return 1

    import torch

    import skflow_ad

    if args.threads:
        torch.set_num_threads(args.threads)
    from skflow_ad.trainer import resolve_device

    device = resolve_device(args.device)
    print(f"command: python {' '.join(shlex.quote(a) for a in ([sys.argv[0]] + (argv or sys.argv[1:])))}")
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"CPU cores {os.cpu_count()}, python {platform.python_version()}, {platform.machine()}")
    print(f"skflow_ad from {Path(skflow_ad.__file__).parent}")
    print(f"settings: {vars(args)}", flush=True)

    rows, cache = [], {}
    for name in args.detectors:
        csflow = name == "csflow"
        for map_mode in (args.csflow_map_modes if csflow else ["all"]):
            for normalization in (args.csflow_feature_normalizations if csflow else ["channel"]):
                rows += run_one(name, args, cache, map_mode, normalization) or []
    print()
    print(f"KolektorSDD ({data_root}), pretrained={args.pretrained}, seed={args.seed}, "
          f"predict = score_samples_and_anomaly_map (one pass) on {rows[0]['n_test'] if rows else '?'} test images")
    print(format_table(rows) if rows else "(no detector finished)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
