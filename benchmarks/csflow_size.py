"""Size of CS-Flow's cross-scale flow: parameters and forward FLOPs per image.

Builds ``CrossScaleFlow`` on PyTorch's ``meta`` device (no weights are
allocated) and counts the floating-point operations of one forward pass with
``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts as 2;
convolutions dominate). The feature maps are those of EfficientNet-B5 stage 6
(stride 32, TensorFlow "same" padding) on the image at full, half and quarter
size. Example::

    python benchmarks/csflow_size.py --image-size 768 768 --hidden 1024 128
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's package


def feature_sizes(height, width, n_scales=3, stride=32):
    """Map sizes of the image pyramid: image ``H // 2**s``, then ``ceil(. / stride)``."""
    return [(math.ceil((height // 2**s) / stride), math.ceil((width // 2**s) / stride)) for s in range(n_scales)]


def flow_size(sizes, n_channels, hidden, n_blocks):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from skflow_ad.nn.csflow import CrossScaleFlow

    with torch.device("meta"):
        flow = CrossScaleFlow(n_channels, n_scales=len(sizes), n_coupling_blocks=n_blocks, hidden_channels=hidden)
        maps = [torch.empty(1, n_channels, h, w) for h, w in sizes]
        with FlopCounterMode(display=False) as counter:
            flow(maps)
    return sum(p.numel() for p in flow.parameters()), counter.get_total_flops()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", nargs=2, type=int, default=[768, 768], metavar=("H", "W"))
    p.add_argument("--hidden", nargs="+", type=int, default=[1024], help="cross_conv_hidden_channels values")
    p.add_argument("--blocks", type=int, default=4, help="n_coupling_blocks")
    p.add_argument("--channels", type=int, default=304, help="feature channels (EfficientNet-B5 stage 6: 304)")
    args = p.parse_args(argv)
    sizes = feature_sizes(*args.image_size)
    print(f"image {args.image_size[0]}x{args.image_size[1]} px, feature maps {sizes}, "
          f"{args.channels} channels, {args.blocks} blocks")
    for hidden in args.hidden:
        n_params, flops = flow_size(sizes, args.channels, hidden, args.blocks)
        print(f"hidden {hidden}: {n_params:,} flow parameters, {flops / 1e9:.2f} GFLOPs per image (forward)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
