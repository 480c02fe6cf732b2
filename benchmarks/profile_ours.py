"""Where our detectors spend their time: profiles of a flow training step and of inference.

Prints, for U-Flow (resnet18) and CS-Flow:

* torch.profiler's top operators (self CPU time) of one training step of the
  flow on cached features (forward, loss, backward, Adam step);
* cProfile's top functions (cumulative time) of
  ``score_samples_and_anomaly_map`` on a few images;
* a split of one inference batch into backbone, flow and score/map time;
* quick what-ifs for the flow step: channels_last memory format, bfloat16
  autocast and, for U-Flow, FrEIA's own ``AllInOneBlock`` (permutation as a
  1x1 convolution) instead of ours (same step, timed against the plain one,
  interleaved).

Only our package is needed. Example::

    python benchmarks/profile_ours.py --image-size 128 --n-images 8
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time

import numpy as np
import torch


def make_images(n, size, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def detector(method, args):
    from skflow_ad import CSFlowDetector, UFlowDetector

    common = dict(pretrained=False, image_size=args.image_size, batch_size=args.batch_size, max_epochs=1,
                  validation_fraction=0.0, device="cpu", random_state=0)
    if method == "uflow":
        return UFlowDetector(backbone="resnet18", **common)
    return CSFlowDetector(cross_conv_hidden_channels=args.csflow_hidden, **common)


def train_step(recipe, flow, optimizer, batch, memory_format=None, autocast=False):
    if memory_format is not None:
        batch = [b.contiguous(memory_format=memory_format) for b in batch]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        latents, ljd = flow(batch)
        loss = recipe.loss([z.float() for z in latents], ljd.float()).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def build_flow(det, features, freia_block=False):
    """A fresh flow for ``features``; ``freia_block`` builds it with FrEIA's own ``AllInOneBlock``."""
    import FrEIA.modules as Fm

    import skflow_ad.nn.uflow as uflow_nn

    ours = uflow_nn.AllInOneBlock
    if freia_block:
        uflow_nn.AllInOneBlock = Fm.AllInOneBlock
    try:
        return det.build_flow([tuple(x.shape[1:]) for x in features])
    finally:
        uflow_nn.AllInOneBlock = ours


def profile_train(method, det, features, args):
    recipe = det.make_trainer([tuple(f.shape[1:]) for f in features]).recipe
    flow = build_flow(det, features)
    optimizer = recipe.make_optimizer([p for p in flow.parameters() if p.requires_grad])
    batch = [f[: args.batch_size] for f in features]
    train_step(recipe, flow, optimizer, batch)  # warm-up
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_step(recipe, flow, optimizer, batch)
    print(f"\n## {method}: one flow training step (batch {args.batch_size}), torch.profiler, top by self CPU")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))

    variants = {
        "plain": dict(),
        "channels_last": dict(memory_format=torch.channels_last),
        "bf16 autocast": dict(autocast=True),
    }
    if method == "uflow":
        # Our AllInOneBlock gathers channels for the hard permutation; FrEIA's multiplies by a 0/1 matrix.
        variants["FrEIA block"] = dict(freia_block=True)
    flows = {}
    for name, kw in variants.items():
        f = build_flow(det, features, freia_block=kw.pop("freia_block", False))
        if "memory_format" in kw:
            f = f.to(memory_format=kw["memory_format"])
        opt = recipe.make_optimizer([p for p in f.parameters() if p.requires_grad])
        train_step(recipe, f, opt, batch, **kw)
        flows[name] = (f, opt, kw)
    times = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, (f, opt, kw) in flows.items():
            start = time.perf_counter()
            train_step(recipe, f, opt, batch, **kw)
            times[name].append(time.perf_counter() - start)
    plain = statistics.median(times["plain"])
    print(f"## {method}: flow training step variants (median of {args.repeats}, interleaved)")
    for name, values in times.items():
        t = statistics.median(values)
        print(f"  {name:15s} {t:.3f}s  ({t / plain:.2f}x plain)")


def profile_inference(method, det, images, args):
    det.score_samples(images[:2])  # warm-up
    pr = cProfile.Profile()
    pr.enable()
    det.score_samples_and_anomaly_map(images)
    pr.disable()
    out = io.StringIO()
    pstats.Stats(pr, stream=out).sort_stats("cumulative").print_stats(args.top)
    print(f"\n## {method}: score_samples_and_anomaly_map on {len(images)} images, cProfile, top cumulative")
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:6000])

    from skflow_ad.inference import latent_energies
    from skflow_ad.modes import inference_network

    network = inference_network(det)
    backbone = flow = post = convert = 0.0
    with torch.inference_mode():
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            batches = [torch.from_numpy(b) for b in np.array_split(images, max(1, len(images) // det.batch_size))]
            t1 = time.perf_counter()
            convert += t1 - t0
            for batch in batches:
                t0 = time.perf_counter()
                maps = network.features(batch)
                t1 = time.perf_counter()
                latents, _ = network.flow(maps)
                t2 = time.perf_counter()
                network.head(latents)
                latent_energies(latents)
                t3 = time.perf_counter()
                backbone += t1 - t0
                flow += t2 - t1
                post += t3 - t2
    total = convert + backbone + flow + post
    print(f"## {method}: one inference pass split (sum over {args.repeats} passes of {len(images)} images)")
    for name, t in (("batching", convert), ("backbone", backbone), ("flow", flow),
                    ("score + map", post)):
        print(f"  {name:24s} {t:7.3f}s  {100 * t / total:5.1f}%")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["uflow", "csflow"], choices=["uflow", "csflow"])
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--n-images", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--csflow-hidden", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--top", type=int, default=15, help="rows of each profile")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    images = make_images(args.n_images, args.image_size)
    for method in args.methods:
        det = detector(method, args).fit(images)
        profile_train(method, det, det.extract_features(images), args)
        profile_inference(method, det, images, args)


if __name__ == "__main__":
    main()
