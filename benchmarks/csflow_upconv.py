"""CS-Flow's coarse-to-fine convolution: the coarse-scale form against the direct form, eager CPU.

Times one up-convolution of a cross convolution at inference, ``conv(up(x))``
computed directly (bilinear resize, then the convolution) and as
``skflow_ad.nn.csflow.upsampled_convolution`` (channel mixing at the coarse
scale, the mixed channels resized channels-last, then the shifted taps summed
as ``k * k`` slices, ``tap_sum("shifts")``, or one ``F.fold``,
``tap_sum("fold")``), for the coarse
map sizes CS-Flow meets: EfficientNet-B5 at 256 px gives flow maps of 8, 4 and
2 pixels (coarse inputs 4 and 2), at 768 px 24, 12 and 6 (coarse inputs 12 and
6). Each form runs ``--repeats`` times interleaved; the best mean per call is
printed, with the ratios and the largest difference of each output to the direct one.
Example::

    python benchmarks/csflow_upconv.py --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's package


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coarse-sizes", nargs="+", type=int, default=[2, 4, 6, 12], help="coarse map side")
    p.add_argument("--kernel-sizes", nargs="+", type=int, default=[3, 5])
    p.add_argument("--in-channels", type=int, default=1024, help="the hidden channels (paper: 1024)")
    p.add_argument("--out-channels", type=int, default=608, help="2 x 304 (EfficientNet-B5 stage 6)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--calls", type=int, default=10, help="calls per timing")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def time_call(function, calls):
    function()  # warm-up: allocations and the cached tap-major weight
    start = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - start) / calls


def main(argv=None):
    args = parse_args(argv)
    import torch

    import torch.nn.functional as F

    from skflow_ad.nn.csflow import tap_sum, upsampled_convolution

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, "
          f"{args.in_channels} -> {args.out_channels} channels")
    print("| kernel | coarse -> fine | direct (ms) | shifts (ms) | fold (ms) | direct / shifts | direct / fold "
          "| max diff shifts | max diff fold |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for k in args.kernel_sizes:
        conv = torch.nn.Conv2d(args.in_channels, args.out_channels, k, padding=k // 2)
        for side in args.coarse_sizes:
            coarse = torch.randn(args.batch, args.in_channels, side, side)
            size = (2 * side, 2 * side)
            forms = {"direct": lambda: conv(F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)),
                     "shifts": lambda: upsampled_convolution(conv, coarse, size)}

            def fold():
                with tap_sum("fold"):
                    return upsampled_convolution(conv, coarse, size)
            forms["fold"] = fold
            best = {name: float("inf") for name in forms}
            with torch.inference_mode():
                direct = forms["direct"]()
                diff = {name: (forms[name]() - direct).abs().max().item() for name in ("shifts", "fold")}
                for _ in range(args.repeats):
                    for name, function in forms.items():
                        best[name] = min(best[name], time_call(function, args.calls))
            ms = {name: f"{value * 1e3:.2f}" for name, value in best.items()}
            print(f"| {k} | {side} -> {2 * side} | {ms['direct']} | {ms['shifts']} | {ms['fold']} | "
                  f"{best['direct'] / best['shifts']:.2f} | {best['direct'] / best['fold']:.2f} | "
                  f"{diff['shifts']:.1e} | {diff['fold']:.1e} |")


if __name__ == "__main__":
    main()
