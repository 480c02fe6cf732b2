"""Detection quality of U-Flow vs anomalib 2.7's U-Flow, on the same random backbone.

For each seed the script draws ONE random ``resnet18`` (timm, random init under
that seed), saves its state dict, and fits both sides on KolektorSDD
``train/good`` with those backbone weights:

* ``anomalib``: ``anomalib.models.image.uflow.torch_model.UflowModel`` with
  anomalib's own training recipe (``Uflow.configure_optimizers``: Adam, lr 1e-3,
  weight decay 1e-5, ``LinearLR`` from 1 to 0.4 over 25,000 scheduler steps,
  which Lightning steps once per epoch; ``UFlowLoss``; the datamodule's batch
  of 32, shuffled, last batch kept; backbone and flow run on every batch).
  ``timm.create_model`` is patched so that anomalib's feature extractor loads
  the saved state dict (strictly) instead of downloading ImageNet weights.
* ``ours``: ``UFlowDetector(backbone="resnet18", pretrained=PATH, ...)`` at its
  defaults otherwise (batch 32, 10% validation split, early stopping), plus any
  ``--ours-params``.

Both sides see the same uint8 images, loaded once with
``skflow_ad.datasets.load_mvtec_folder`` at ``--image-size`` (bilinear,
anti-aliased; masks nearest-neighbour), gray replicated to RGB and
ImageNet-normalised, so no side resizes again. Image AUROC, pixel AUROC and
AUPRO (FPR <= 0.3) are computed here with ``skflow_ad.metrics`` for both sides
from their anomaly maps at the working resolution (image score = the map's
maximum on both sides). The fit time is the wall time of training (anomalib:
the epochs; ours: ``fit``, which also extracts the features once and sets the
thresholds), each side in its own subprocess with ``--threads`` torch threads,
the two sides run one after the other for each seed so that the time ratio is
taken in one run.

Each (side, seed, settings) result is cached under ``--results`` (scores,
maps, times), so an interrupted run resumes; ``--fresh`` recomputes. anomalib
lives in its own virtual environment (``docs/performance.md``): pass its
interpreter with ``--anomalib-python``; workers import this checkout's
``skflow_ad`` (``PYTHONPATH``). Example::

    python benchmarks/quality_vs_anomalib.py \\
        --anomalib-python /path/to/anomalib-venv/bin/python --seeds 0 1 2 --epochs 30

A smoke run of our side only, to check that the script works (about 25 s on a 2-core machine)::

    python benchmarks/quality_vs_anomalib.py --sides ours --seeds 0 --epochs 1 \\
        --image-size 64 32 --results /tmp/quality_smoke
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "ksdd"
DEFAULT_RESULTS = REPO_ROOT / "benchmarks" / "results" / "quality_vs_anomalib"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIDES = ("anomalib", "ours")
# This checkout's package, not an installed one (the workers get it through PYTHONPATH).
sys.path.insert(0, str(REPO_ROOT))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="KolektorSDD folder in MVTec layout")
    p.add_argument("--results", default=str(DEFAULT_RESULTS), help="folder for backbones, cached runs, tables")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one random backbone per seed")
    p.add_argument("--epochs", type=int, default=30, help="training epochs (ours: the max_epochs cap)")
    p.add_argument("--image-size", nargs=2, type=int, default=[208, 80], metavar=("H", "W"),
                   help="working resolution of both sides; divisible by 16 (default: about KSDD's 2.5:1 aspect)")
    p.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    p.add_argument("--ours-params", default="{}",
                   help='JSON of further UFlowDetector parameters, e.g. \'{"feature_normalization": "layer"}\'')
    p.add_argument("--label", default=None, help="name of our variant in the table (default: --ours-params)")
    p.add_argument("--batch-size", type=int, default=32, help="both sides (anomalib's datamodule default: 32)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of each worker")
    p.add_argument("--anomalib-python", default=sys.executable, help="interpreter with anomalib 2.7 installed")
    p.add_argument("--ours-python", default=sys.executable, help="interpreter with skflow_ad's dependencies")
    p.add_argument("--fresh", action="store_true", help="recompute runs that are cached")
    p.add_argument("--worker", nargs=2, metavar=("SIDE", "SEED"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------------------ files
def size_tag(args):
    return f"{args.image_size[0]}x{args.image_size[1]}"


def data_file(args):
    return Path(args.results) / f"ksdd_{size_tag(args)}.npz"


def backbone_file(args, seed):
    return Path(args.results) / f"resnet18_seed{seed}.pth"


def ours_params(args, seed):
    """All UFlowDetector parameters of our side, defaults included."""
    from skflow_ad import UFlowDetector

    params = dict(backbone="resnet18", pretrained=str(backbone_file(args, seed)), image_size=tuple(args.image_size),
                  max_epochs=args.epochs, batch_size=args.batch_size, device="cpu", random_state=seed)
    params.update(json.loads(args.ours_params))
    return UFlowDetector(**params).get_params(deep=False)


def run_key(args, side, seed):
    """Cache name of one run; ours hashes all its parameters, so a changed default is a new run."""
    key = f"{side}_seed{seed}_{size_tag(args)}_ep{args.epochs}_bs{args.batch_size}"
    if side == "ours":
        params = {k: v for k, v in ours_params(args, seed).items() if k != "pretrained"}
        digest = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]
        key += f"_{digest}"
    return key


def prepare_data(args):
    """Load KSDD once at the working size and store it for the workers."""
    import numpy as np

    from skflow_ad.datasets import load_mvtec_folder

    path = data_file(args)
    if not path.exists():
        data = load_mvtec_folder(args.data, image_size=tuple(args.image_size), color=False)
        np.savez(path, X_train=data.X_train, X_test=data.X_test, y_test=data.y_test, masks_test=data.masks_test)
    return dict(np.load(path))


def make_backbone(args, seed):
    """Random timm resnet18 drawn under ``seed``, saved once."""
    import timm
    import torch

    path = backbone_file(args, seed)
    if not path.exists():
        torch.manual_seed(seed)
        torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    return path


def weights_fingerprint(module):
    """Sum of |w| over the backbone's parameters: equal on both sides when they load the same file.

    Parameters only: ``backbone_batchnorm="recalibrate"`` changes the BatchNorm buffers, not the weights.
    """
    return float(sum(p.detach().double().abs().sum() for p in module.parameters()))


def to_network_input(images):
    """uint8 gray ``(n, H, W)`` -> ImageNet-normalised float ``(n, 3, H, W)``."""
    import torch

    batch = torch.from_numpy(images).float().div(255.0)[:, None].expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (batch - mean) / std


# ---------------------------------------------------------------- workers
def patch_timm_to_load(path):
    """Make every ``timm.create_model`` call build random weights, then load ``path`` strictly."""
    import timm
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    original = timm.create_model

    def create_model(name, *args, **kwargs):
        kwargs["pretrained"] = False
        model = original(name, *args, **kwargs)
        own = model.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise RuntimeError(f"{path} lacks {missing[:3]} for {name}")
        model.load_state_dict({k: state[k] for k in own}, strict=True)
        return model

    # anomalib calls ``timm.create_model`` by attribute (``import timm``), so patching the module suffices.
    timm.create_model = create_model


def anomalib_worker(args, seed, data):
    import numpy as np
    import torch

    patch_timm_to_load(backbone_file(args, seed))
    from anomalib.models.image.uflow.loss import UFlowLoss
    from anomalib.models.image.uflow.torch_model import UflowModel

    torch.manual_seed(seed)
    np.random.seed(seed)  # the flow's hard permutations
    model = UflowModel(input_size=tuple(args.image_size), flow_steps=4, backbone="resnet18", affine_clamp=2.0,
                       affine_subnet_channels_ratio=1.0, permute_soft=False)
    fingerprint = weights_fingerprint(model.feature_extractor.feature_extractor)
    # Uflow.configure_optimizers; Lightning steps an epoch-interval scheduler once per epoch.
    optimizer = torch.optim.Adam([{"params": model.parameters(), "initial_lr": 1e-3}], lr=1e-3, weight_decay=1e-5)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=0.4, total_iters=25000)
    loss_fn = UFlowLoss()
    train = to_network_input(data["X_train"])
    generator = torch.Generator().manual_seed(seed)
    losses = []
    start = time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        total = 0.0
        for rows in torch.randperm(len(train), generator=generator).split(args.batch_size):
            latents, log_jac_det = model(train[rows])
            loss = loss_fn(latents, log_jac_det)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
        scheduler.step()
        losses.append(total / len(train))
        print(f"  epoch {len(losses)}: loss {losses[-1]:.1f}, {time.perf_counter() - start:.0f} s", flush=True)
    fit_time = time.perf_counter() - start
    model.eval()
    test = to_network_input(data["X_test"])
    scores, maps = [], []
    with torch.inference_mode():
        for batch in test.split(args.batch_size):
            out = model(batch)
            scores.append(out.pred_score.reshape(-1))
            maps.append(out.anomaly_map[:, 0])
    return dict(fit_time=fit_time, epochs=args.epochs, loss_curve=losses, fingerprint=fingerprint), \
        np.concatenate([s.numpy() for s in scores]), np.concatenate([m.numpy() for m in maps])


def ours_worker(args, seed, data):
    from skflow_ad import UFlowDetector

    det = UFlowDetector(**ours_params(args, seed))
    start = time.perf_counter()
    det.fit(data["X_train"])
    fit_time = time.perf_counter() - start
    # The fitted extractor's timm body (wrapped when feature_normalization standardises it).
    body = next(m for m in det.extractor_.modules() if hasattr(m, "body")).body
    scores, maps = det.score_samples_and_anomaly_map(data["X_test"])
    det.save(Path(args.results) / f"{run_key(args, 'ours', seed)}.skad")  # a model file, for later analysis
    info = dict(fit_time=fit_time, epochs=det.n_iter_, loss_curve=det.loss_curve_,
                validation_loss_curve=det.validation_loss_curve_, fingerprint=weights_fingerprint(body))
    return info, -scores, maps


def worker(args):
    import numpy as np
    import torch

    side, seed = args.worker[0], int(args.worker[1])
    torch.set_num_threads(args.threads)
    data = dict(np.load(data_file(args)))
    info, scores, maps = (anomalib_worker if side == "anomalib" else ours_worker)(args, seed, data)
    key = run_key(args, side, seed)
    np.savez(Path(args.results) / f"{key}.npz", scores=scores.astype(np.float64), maps=maps.astype(np.float32))
    (Path(args.results) / f"{key}.json").write_text(json.dumps(info))


def run_side(args, side, seed, argv):
    """Result of one (side, seed): from the cache or from a fresh worker subprocess."""
    import numpy as np

    key = run_key(args, side, seed)
    info_path, arrays_path = Path(args.results) / f"{key}.json", Path(args.results) / f"{key}.npz"
    if args.fresh or not (info_path.exists() and arrays_path.exists()):
        python = args.anomalib_python if side == "anomalib" else args.ours_python
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
        # Idle OpenMP threads sleep instead of spinning: on a shared machine, spinning threads
        # of a 2-thread worker fight the other processes and slow both sides by up to 10x.
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        print(f"[{side} seed {seed}] fitting ({python})", flush=True)
        subprocess.run([python, __file__, *argv, "--worker", side, str(seed)], check=True, env=env, cwd=REPO_ROOT)
        cached = False
    else:
        cached = True
    arrays = np.load(arrays_path)
    return json.loads(info_path.read_text()), arrays["scores"], arrays["maps"], cached


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    data_root = Path(args.data)
    if not (data_root / "train" / "good").is_dir():
        print(f"KolektorSDD not found at {data_root}; pass --data PATH.", file=sys.stderr)
        return 1
    if any(v % 16 for v in args.image_size):
        print(f"--image-size {args.image_size}: both sides need multiples of 16 (resnet18's stride).",
              file=sys.stderr)
        return 1
    Path(args.results).mkdir(parents=True, exist_ok=True)

    import numpy as np
    import torch

    from skflow_ad.metrics import aupro, image_auroc, pixel_auroc

    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"{args.threads} threads per worker, python {platform.python_version()}")
    print(f"settings: {vars(args)}", flush=True)
    data = prepare_data(args)
    label = args.label or (f"ours {args.ours_params}" if json.loads(args.ours_params) else "ours")
    rows = []
    for seed in args.seeds:
        make_backbone(args, seed)
        fingerprints = {}
        for side in args.sides:
            info, scores, maps, cached = run_side(args, side, seed, argv)
            fingerprints[side] = info["fingerprint"]
            row = dict(side=side if side == "anomalib" else label, seed=seed, epochs=info["epochs"],
                       image_auroc=image_auroc(data["y_test"], scores),
                       pixel_auroc=pixel_auroc(data["masks_test"], maps),
                       aupro=aupro(data["masks_test"], maps), fit_time=info["fit_time"], cached=cached)
            rows.append(row)
            print(f"[{side} seed {seed}] image AUROC {row['image_auroc']:.3f}, pixel AUROC "
                  f"{row['pixel_auroc']:.3f}, AUPRO {row['aupro']:.3f}, fit {row['fit_time']:.1f} s, "
                  f"{row['epochs']} epochs{' (cached)' if cached else ''}", flush=True)
        if len(set(round(v, 3) for v in fingerprints.values())) > 1:
            raise RuntimeError(f"seed {seed}: the sides loaded different backbones {fingerprints}")

    print(f"\nKolektorSDD, working size {size_tag(args)}, {args.epochs} epochs, batch {args.batch_size}, "
          f"same random resnet18 per seed on both sides; AUPRO at FPR <= 0.3")
    print("| side | seed | epochs run | image AUROC | pixel AUROC | AUPRO | fit (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['side']} | {r['seed']} | {r['epochs']} | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | "
              f"{r['aupro']:.3f} | {r['fit_time']:.1f}{'*' if r['cached'] else ''} |")
    for side in dict.fromkeys(r["side"] for r in rows):
        mine = [r for r in rows if r["side"] == side]
        print(f"| {side} | mean | {np.mean([r['epochs'] for r in mine]):.1f} | "
              f"{np.mean([r['image_auroc'] for r in mine]):.3f} | {np.mean([r['pixel_auroc'] for r in mine]):.3f} | "
              f"{np.mean([r['aupro'] for r in mine]):.3f} | {np.mean([r['fit_time'] for r in mine]):.1f} |")
    if {"anomalib"} < {r["side"] for r in rows}:
        ref = {r["seed"]: r for r in rows if r["side"] == "anomalib"}
        ours = [r for r in rows if r["side"] != "anomalib" and r["seed"] in ref]
        ratios = [r["fit_time"] / ref[r["seed"]]["fit_time"] for r in ours]
        deltas = {m: np.mean([r[m] - ref[r["seed"]][m] for r in ours]) for m in ("image_auroc", "pixel_auroc", "aupro")}
        print(f"\nours - anomalib (mean over seeds): image AUROC {deltas['image_auroc']:+.3f}, "
              f"pixel AUROC {deltas['pixel_auroc']:+.3f}, AUPRO {deltas['aupro']:+.3f}; "
              f"fit time ratio ours / anomalib {' / '.join(f'{x:.2f}' for x in ratios)} "
              f"(mean {np.mean(ratios):.2f})")
    if any(r["cached"] for r in rows):
        print("* cached from an earlier run: its time ratio was not measured in this run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
