"""Side-by-side benchmark: skflow_ad's detectors vs anomalib's torch models.

Compares, in one process and one run, on the same random images and the same
configuration:

* training wall time per epoch (U-Flow/resnet18 and CS-Flow),
* inference throughput (image score + anomaly map): our eager path (two
  calls, one pass, compiled, channels-last weights, bfloat16 autocast) and
  our exported model (ONNX Runtime; OpenVINO FP32, FP16 weights, INT8
  extractor calibrated on other random images), with each variant's largest
  score and map difference to the eager one pass,
* the NFA mask of U-Flow on the same latents,
* peak memory of ``predict`` on two numbers of images (in subprocesses).

It needs an environment with both packages (anomalib installed next to
skflow_ad, see ``docs/performance.md``). anomalib's backbones are built with
random weights offline: ``timm.create_model(pretrained=True)`` is forced to
``pretrained=False`` and torchvision's EfficientNet-B5 is built with
``weights=None`` (both by monkeypatching, before the models are created).
Our detectors use ``pretrained=False``. Random weights do not change the
cost of any operation measured here.

Times are medians over ``--repeats`` interleaved repetitions (ours, then the
reference, then ours ...), so that load from other processes on a shared
machine hits both sides alike; ratios are ours / reference.

Example (small, CPU)::

    python benchmarks/compare_anomalib.py --n-images 32 --epochs 2 --csflow-hidden 64
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------- helpers
def make_images(n, size, seed=0):
    """``n`` random RGB uint8 images ``(n, size, size, 3)`` with smooth structure."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, size=(n, size // 16, size // 16, 3)).astype(np.float32)
    up = np.repeat(np.repeat(low, 16, axis=1), 16, axis=2)
    noise = rng.normal(0, 20, size=up.shape).astype(np.float32)
    return np.clip(up + noise, 0, 255).astype(np.uint8)


def to_tensor(chunk):
    """uint8 ``(b, H, W, 3)`` -> ImageNet-normalised float ``(b, 3, H, W)`` (the reference's input)."""
    batch = torch.from_numpy(np.ascontiguousarray(chunk)).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (batch - mean) / std


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def median(values):
    return statistics.median(values) if values else float("nan")


# -------------------------------------------------- anomalib, offline setup
def patch_offline_backbones():
    """Force random-init backbones in anomalib (no downloads)."""
    import timm

    original = timm.create_model

    def create_model(*args, **kwargs):
        kwargs["pretrained"] = False
        return original(*args, **kwargs)

    timm.create_model = create_model
    # anomalib modules that imported the name directly
    import importlib

    for name in (
        "anomalib.models.components.feature_extractors.timm",
        "anomalib.models.image.uflow.feature_extraction",
    ):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "create_model"):
            module.create_model = create_model
        if hasattr(module, "timm"):
            module.timm.create_model = create_model

    # CS-Flow: anomalib calls torchvision's efficientnet_b5(weights=IMAGENET1K_V1) by the name it
    # imported into its torch_model module; rebind that name to a weights=None builder.
    from torchvision.models import efficientnet_b5

    from anomalib.models.image.csflow import torch_model as csflow_tm

    csflow_tm.efficientnet_b5 = lambda *args, **kwargs: efficientnet_b5(weights=None)


def anomalib_version():
    try:
        import anomalib

        return anomalib.__version__
    except Exception:  # pragma: no cover
        return "not installed"


def ref_uflow(image_size):
    from anomalib.models.image.uflow.torch_model import UflowModel

    return UflowModel(input_size=(image_size, image_size), flow_steps=4, backbone="resnet18",
                      affine_clamp=2.0, affine_subnet_channels_ratio=1.0, permute_soft=False)


def ref_csflow(image_size, hidden):
    from anomalib.models.image.csflow.torch_model import CsFlowModel

    return CsFlowModel(input_size=(image_size, image_size), cross_conv_hidden_channels=hidden,
                       n_coupling_blocks=4, clamp=3, num_channels=3)


def ref_uflow_loss(hidden_variables, jacobians):
    # anomalib.models.image.uflow.loss.UFlowLoss
    lpz = torch.sum(torch.stack([0.5 * torch.sum(z**2, dim=(1, 2, 3)) for z in hidden_variables], dim=0))
    return torch.mean(lpz - jacobians)


def ref_csflow_loss(z_dist, jacobians):
    # anomalib.models.image.csflow.loss.CsFlowLoss
    concatenated = torch.cat([z_dist[i].reshape(z_dist[i].shape[0], -1) for i in range(len(z_dist))], dim=1)
    return torch.mean(0.5 * torch.sum(concatenated**2, dim=(1,)) - jacobians) / concatenated.shape[1]


def ref_train_epoch(model, images, method, batch_size):
    """One epoch of the reference: backbone + flow forward, loss, backward, Adam (+ clip) step."""
    model.train()
    if method == "uflow":
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-5)
        loss_fn = ref_uflow_loss
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=2e-4, eps=1e-4, weight_decay=1e-5, betas=(0.5, 0.9))
        loss_fn = ref_csflow_loss
    order = np.random.default_rng(0).permutation(len(images))
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        batch = to_tensor(images[order[i : i + batch_size]])
        z, ljd = model(batch)
        loss = loss_fn(z, ljd)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if method == "csflow":
            torch.nn.utils.clip_grad_norm_(params, 1.0)  # lightning gradient_clip_val=1
        optimizer.step()
    return time.perf_counter() - start


def ref_infer(model, images, batch_size):
    """Reference inference: eval forward -> (score, anomaly map) for every image."""
    model.eval()
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            out = model(to_tensor(images[i : i + batch_size]))
            score = getattr(out, "pred_score", None)
            amap = getattr(out, "anomaly_map", out)
            if score is None:  # older anomalib returns the map only
                score = amap.flatten(1).amax(1)
            _ = score.numpy(), amap.numpy()
    return time.perf_counter() - start


# ------------------------------------------------------------------ ours
def our_detector(method, args, epochs):
    from skflow_ad import CSFlowDetector, UFlowDetector

    common = dict(pretrained=False, image_size=args.image_size, batch_size=args.batch_size, max_epochs=epochs,
                  validation_fraction=0.0, n_iter_no_change=10**6, device="cpu", random_state=0)
    if method == "uflow":
        return UFlowDetector(backbone="resnet18", **common)
    return CSFlowDetector(cross_conv_hidden_channels=args.csflow_hidden, **common)


def our_flow_epoch(det, features):
    """One training epoch of our flow on cached features (a fresh flow, same hooks as fit)."""
    shapes = [tuple(f.shape[1:]) for f in features]
    flow = det.build_flow(shapes)
    trainer = det.make_trainer(shapes, max_epochs=1, validation_fraction=0.0, n_iter_no_change=10**6, device="cpu",
                               seed=0)
    trainer.recipe = dataclasses.replace(trainer.recipe, make_scheduler=None)  # one epoch: no schedule to time
    return timed(lambda: trainer.fit(flow, features))[0]


def our_features(det, images):
    return timed(lambda: det.extract_features(images))


def our_infer_two_calls(det, images):
    """``score_samples`` then ``anomaly_map``: two passes of backbone + flow."""
    def run():
        det.score_samples(images)
        det.anomaly_map(images)
    return timed(run)[0]


def our_infer_one_pass(det, images):
    """``score_samples_and_anomaly_map``: score and map from one pass."""
    return timed(lambda: det.score_samples_and_anomaly_map(images))[0]


def compiled_copy(det, images):
    """A copy of ``det`` with ``compile_inference=True``, compiled by a first (timed) call."""
    import pickle

    compiled = pickle.loads(pickle.dumps(det)).set_params(compile_inference=True)
    return compiled, timed(lambda: compiled.score_samples_and_anomaly_map(images[: det.batch_size]))[0]


class TorchVariant:
    """``score_samples_and_anomaly_map`` of a copy of ``det`` run with channels-last weights or bfloat16 autocast.

    Both are tried on the eager path without being options of the detectors:
    the benchmark says whether they pay (issue 10 keeps only what does).
    """

    def __init__(self, det, kind):
        import pickle

        self.det = pickle.loads(pickle.dumps(det))
        self.kind = kind
        if kind == "channels-last":
            self.det._inference_network().to(memory_format=torch.channels_last)

    def score_samples_and_anomaly_map(self, images):
        if self.kind == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self.det.score_samples_and_anomaly_map(images)
        return self.det.score_samples_and_anomaly_map(images)


#: Our inference variants: (label in the table, what ``--variants`` calls it).
OUR_VARIANTS = {
    "two-calls": "score_samples + anomaly_map",
    "one-pass": "score_samples_and_anomaly_map",
    "compiled": "score_samples_and_anomaly_map, compile_inference=True",
    "channels-last": "the same, channels-last weights",
    "bf16": "the same, bfloat16 autocast",
    "onnxruntime": "exported, ONNX Runtime",
    "openvino-fp32": "exported, OpenVINO FP32",
    "openvino-fp16": "exported, OpenVINO FP16 weights",
    "openvino-int8": "exported, OpenVINO INT8 extractor",
}


def our_runners(det, names, calibration, directory, threads):
    """``{variant: object with score_samples_and_anomaly_map}`` and the one-off costs (s) of building them."""
    from skflow_ad.deploy import ExportedDetector
    from skflow_ad.export import onnx_to_openvino

    runners, costs = {}, {}
    onnx_paths = {}  # runtime the graph is laid out for -> its .onnx file, exported once

    def onnx_for(runtime):
        if runtime not in onnx_paths:
            costs[f"export_onnx (graph for {runtime})"], onnx_paths[runtime] = timed(
                lambda: det.export_onnx(directory / f"model_{runtime}.onnx", runtime=runtime))
        return onnx_paths[runtime]

    for name in names:
        if name in ("two-calls", "one-pass"):
            runners[name] = det
        elif name == "compiled":
            runners[name], costs["compile_inference first call"] = compiled_copy(det, calibration)
        elif name in ("channels-last", "bf16"):
            runners[name] = TorchVariant(det, name)
        elif name == "onnxruntime":
            runners[name] = ExportedDetector(onnx_for("onnxruntime"), threads=threads)
        else:
            precision = name.split("-")[1].upper()
            options = {"calibration_images": calibration} if precision == "INT8" else {}
            onnx_path = onnx_for("openvino")
            costs[f"onnx_to_openvino {precision}"], xml = timed(
                lambda: onnx_to_openvino(onnx_path, directory / f"model_{precision}.xml", precision=precision,
                                         **options))
            runners[name] = ExportedDetector(xml, "openvino", threads=threads)
    return runners, costs


def agreement(expected, got):
    """Largest relative score difference and largest absolute map difference to ``expected``."""
    (scores, maps), (got_scores, got_maps) = expected, got
    return (float(np.max(np.abs(got_scores - scores) / np.abs(scores))),
            float(np.max(np.abs(np.asarray(got_maps, np.float64) - maps))))


# --------------------------------------------------------------- sections
def bench_training(method, args, images, rows):
    epochs = args.epochs
    print(f"\n[{method}] training on {len(images)} images, {epochs} epoch(s), batch {args.batch_size}", flush=True)
    ours_fit, ours_flow, ours_feat, refs = [], [], [], []
    # Warm-up (oneDNN kernel selection, lazy imports) on 2 images, not timed.
    our_detector(method, args, 1).fit(images[:2])
    warm = ref_uflow(args.image_size) if method == "uflow" else ref_csflow(args.image_size, args.csflow_hidden)
    ref_train_epoch(warm, images[:2], method, args.batch_size)
    del warm
    for rep in range(args.repeats):
        torch.manual_seed(rep)
        det = our_detector(method, args, epochs)
        t, _ = timed(lambda: det.fit(images))
        ours_fit.append(t / epochs)
        t_feat, features = our_features(det, images)
        ours_feat.append(t_feat)
        ours_flow.append(our_flow_epoch(det, features))
        del features
        ref_model = ref_uflow(args.image_size) if method == "uflow" else ref_csflow(args.image_size, args.csflow_hidden)
        refs.append(ref_train_epoch(ref_model, images, method, args.batch_size))
        print(f"  rep {rep}: ours fit/epoch {ours_fit[-1]:.2f}s, ours flow-only epoch {ours_flow[-1]:.2f}s, "
              f"ours feature pass {t_feat:.2f}s, reference epoch {refs[-1]:.2f}s", flush=True)
    label = f"{method} train epoch (s), {len(images)} img"
    rows.append((f"{label}: fit/E (E={epochs})", median(ours_fit), median(refs)))
    rows.append((f"{label}: flow-only", median(ours_flow), median(refs)))
    rows.append((f"{method} feature pass (s), ours only", median(ours_feat), float("nan")))
    return det, ref_model


def bench_inference(method, det, ref_model, args, images, calibration, rows):
    import tempfile
    from pathlib import Path

    print(f"\n[{method}] inference on {len(images)} images", flush=True)
    variants = [name for name in args.variants if not (method == "csflow" and name == "compiled" and
                                                       not args.csflow_compiled)]
    with tempfile.TemporaryDirectory() as directory:
        runners, costs = our_runners(det, variants, calibration, Path(directory), args.threads)
        for name, seconds in costs.items():
            print(f"  {name}: {seconds:.1f}s", flush=True)
        reference_outputs = det.score_samples_and_anomaly_map(images)
        differences = {}
        for name, runner in runners.items():  # warm-up, and how close each variant is to the eager one pass
            if name != "two-calls":
                differences[name] = agreement(reference_outputs, runner.score_samples_and_anomaly_map(images))
        times = {name: [] for name in runners}
        refs = []
        for _ in range(args.repeats):
            for name, runner in runners.items():
                if name == "two-calls":
                    times[name].append(our_infer_two_calls(runner, images))
                else:
                    times[name].append(our_infer_one_pass(runner, images))
            refs.append(ref_infer(ref_model, images, args.batch_size))
            print("  " + ", ".join(f"ours {name} {len(images) / t[-1]:.2f} img/s" for name, t in times.items())
                  + f", reference {len(images) / refs[-1]:.2f} img/s", flush=True)
    n = len(images)
    print(f"  largest differences to the eager one pass (score relative, map absolute; map max "
          f"{float(np.max(reference_outputs[1])):.3g}):", flush=True)
    for name, (score_diff, map_diff) in differences.items():
        print(f"    {name}: {score_diff:.2e}, {map_diff:.2e}", flush=True)
    for name, t in times.items():
        rows.append((f"{method} inference (img/s): {OUR_VARIANTS[name]}", n / median(t), n / median(refs)))
    for name, seconds in costs.items():
        rows.append((f"{method} {name} (s), ours only", seconds, float("nan")))


def bench_nfa(det, args, images, rows):
    """Our nfa_mask vs anomalib's AnomalyMapGenerator.compute_anomaly_mask on the same latents."""
    from anomalib.models.image.uflow.anomaly_map import AnomalyMapGenerator

    from skflow_ad.nfa import nfa_mask

    n = min(args.nfa_images, len(images))
    with torch.inference_mode():
        latents, _ = det.flow_(det.extract_features(images[:n]))
    latents = [z.clone() for z in latents]  # normal tensors, outside inference mode
    # Plant anomalies: inflate a square of latent entries in every other image.
    for i in range(0, n, 2):
        for s, z in enumerate(latents):
            h, w = z.shape[-2:]
            z[i, :, h // 4 : h // 4 + max(2, h // 8), w // 3 : w // 3 + max(2, w // 8)] *= 4.0
    size = (args.image_size, args.image_size)
    generator = AnomalyMapGenerator(input_size=size)
    print(f"\n[nfa] {n} images, latents {[tuple(z.shape) for z in latents]}", flush=True)
    ours_t, ref_t = [], []
    for _ in range(args.repeats):
        arrays = [z.numpy() for z in latents]
        t, ours = timed(lambda: torch.from_numpy(nfa_mask(arrays, size, method="block", window_size=7,
                                                          probability_threshold=0.5)))
        ours_t.append(t)
        t, ref = timed(lambda: generator.compute_anomaly_mask(latents, window_size=7, binomial_probability_thr=0.5,
                                                              high_precision=False))
        ref_t.append(t)
        print(f"  ours {ours_t[-1]:.3f}s, reference {ref_t[-1]:.3f}s", flush=True)
    ref = torch.as_tensor(ref).reshape(ours.shape).bool()
    # anomalib's mask is True on *normal* pixels (log NFA >= epsilon): invert it.
    agreement = float((ours == ~ref).float().mean())
    rows.append((f"nfa mask (s), {n} img", median(ours_t), median(ref_t)))
    rows.append(("nfa mask agreement with ~reference", agreement, 1.0))
    rows.append(("nfa anomalous-pixel fraction ours / ref", float(ours.float().mean()), float((~ref).float().mean())))


# ------------------------------------------------------------ memory
class RSSSampler:
    """Peak resident set size (from /proc/self/statm) sampled every ``interval`` s in a thread."""

    def __init__(self, interval=0.002):
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def rss_bytes():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss_bytes())
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = self.rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss_bytes())


def memory_child(method, n_images, args):
    """Run in a subprocess: fit on a few images, then measure predict's peak RSS on ``n_images``."""
    import gc
    import resource

    torch.set_num_threads(args.threads)
    # Images are --image-size px; the model works at --memory-working-size (resized in predict).
    train = make_images(args.memory_fit_images, args.image_size, seed=1)
    model_args = argparse.Namespace(**{**vars(args), "image_size": args.memory_working_size or args.image_size})
    det = our_detector(method, model_args, 1).fit(train)
    images = make_images(n_images, args.image_size, seed=2)
    gc.collect()
    before = RSSSampler.rss_bytes()
    with RSSSampler() as predict_rss:
        det.predict(images)
    gc.collect()
    before_map = RSSSampler.rss_bytes()
    with RSSSampler() as map_rss:
        maps = det.anomaly_map(images)
    print(json.dumps(dict(
        method=method, n_images=n_images, rss_before=before, predict_peak=predict_rss.peak,
        predict_delta=predict_rss.peak - before, map_delta=map_rss.peak - before_map,
        map_output_bytes=int(maps.nbytes), input_bytes=int(images.nbytes),
        ru_maxrss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )))


def bench_memory(method, args, rows):
    results = {}
    for n in args.memory_images:
        cmd = [sys.executable, __file__, "--memory-child", method, str(n), "--image-size", str(args.image_size),
               "--batch-size", str(args.batch_size), "--csflow-hidden", str(args.csflow_hidden),
               "--threads", str(args.threads), "--memory-fit-images", str(args.memory_fit_images)]
        if args.memory_working_size:
            cmd += ["--memory-working-size", str(args.memory_working_size)]
        print(f"\n[{method}] predict memory on {n} images (subprocess)", flush=True)
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results[n] = json.loads(out)
        r = results[n]
        print(f"  RSS before predict {r['rss_before'] / 2**20:.0f} MiB (input {r['input_bytes'] / 2**20:.0f} MiB), "
              f"predict peak {r['predict_peak'] / 2**20:.0f} MiB (+{r['predict_delta'] / 2**20:.0f} MiB), "
              f"anomaly_map +{r['map_delta'] / 2**20:.0f} MiB (output {r['map_output_bytes'] / 2**20:.0f} MiB)",
              flush=True)
    small, large = (results[n] for n in args.memory_images[:2])
    mib = 2**20
    # In these rows the "ours" column is the larger run and the "reference" column the smaller one.
    rows.append((f"{method} predict peak RSS increase (MiB), {args.memory_images[1]} vs {args.memory_images[0]} img",
                 large["predict_delta"] / mib, small["predict_delta"] / mib))
    rows.append((f"{method} predict total peak RSS (MiB), {args.memory_images[1]} vs {args.memory_images[0]} img",
                 large["predict_peak"] / mib, small["predict_peak"] / mib))
    rows.append((f"{method} predict peak RSS less input (MiB), {args.memory_images[1]} vs {args.memory_images[0]} img",
                 (large["predict_peak"] - large["input_bytes"]) / mib,
                 (small["predict_peak"] - small["input_bytes"]) / mib))


# ------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["uflow", "csflow"], choices=["uflow", "csflow"])
    p.add_argument("--sections", nargs="+", default=["train", "infer", "nfa", "memory"],
                   choices=["train", "infer", "nfa", "memory"], help="what to measure")
    p.add_argument("--n-images", type=int, default=32, help="training images (the issue: 400)")
    p.add_argument("--csflow-n-images", type=int, default=None, help="training images for CS-Flow (default --n-images)")
    p.add_argument("--infer-images", type=int, default=32, help="images for the inference throughput")
    p.add_argument("--epochs", type=int, default=1, help="epochs of our fit (fit time is divided by it)")
    p.add_argument("--image-size", type=int, default=256, help="square working size in px (the issue: 256)")
    p.add_argument("--batch-size", type=int, default=8, help="training and inference batch size (the issue: 8)")
    p.add_argument("--csflow-hidden", type=int, default=1024,
                   help="CS-Flow cross-convolution hidden channels (the issue: 1024)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved repetitions; medians are reported")
    p.add_argument("--variants", nargs="+", default=list(OUR_VARIANTS), choices=list(OUR_VARIANTS),
                   help="our inference variants to time next to the reference")
    p.add_argument("--csflow-compiled", action="store_true",
                   help="time compile_inference for CS-Flow too (8 minutes of compilation on a 2-core CPU)")
    p.add_argument("--calibration-images", type=int, default=32,
                   help="normal images the INT8 variant is calibrated on")
    p.add_argument("--nfa-images", type=int, default=16, help="images whose latents the NFA mask is computed on")
    p.add_argument("--memory-images", type=int, nargs=2, default=[500, 2000], help="two predict sizes to compare")
    p.add_argument("--memory-fit-images", type=int, default=16, help="images the memory runs fit on (1 epoch)")
    p.add_argument("--memory-working-size", type=int, default=None,
                   help="working size of the memory runs' model (images stay --image-size px); "
                        "default --image-size. Smaller keeps 2,000-image predicts short on a CPU")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--memory-child", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]), args)
        return
    torch.set_num_threads(args.threads)
    patch_offline_backbones()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__} "
          f"({args.threads} threads), anomalib {anomalib_version()}, python {platform.python_version()}")
    print(f"config: {vars(args)}", flush=True)
    rows = []
    for method in args.methods:
        n_train = args.csflow_n_images if method == "csflow" and args.csflow_n_images else args.n_images
        det = ref_model = None
        if "train" in args.sections:
            det, ref_model = bench_training(method, args, make_images(n_train, args.image_size), rows)
        if "infer" in args.sections or ("nfa" in args.sections and method == "uflow"):
            if det is None:
                det = our_detector(method, args, 1).fit(make_images(16, args.image_size))
                ref_model = ref_uflow(args.image_size) if method == "uflow" else ref_csflow(args.image_size,
                                                                                              args.csflow_hidden)
            infer_images = make_images(args.infer_images, args.image_size, seed=3)
            if "infer" in args.sections:
                calibration = make_images(args.calibration_images, args.image_size, seed=4)
                bench_inference(method, det, ref_model, args, infer_images, calibration, rows)
            if "nfa" in args.sections and method == "uflow":
                bench_nfa(det, args, infer_images, rows)
        if "memory" in args.sections:
            bench_memory(method, args, rows)
    print("\n| measure | ours | reference | ours / reference |")
    print("| --- | ---: | ---: | ---: |")
    for name, ours, ref in rows:
        ratio = ours / ref if ref and ref == ref else float("nan")
        print(f"| {name} | {ours:.4g} | {ref:.4g} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
