"""The fully convolutional cross-scale normalizing flow of CS-Flow (arXiv 2110.02855).

CS-Flow transforms feature maps of the same image at several scales jointly.
Scale 0 is the finest map (features of the full-size image), each following
scale is about half the size of the previous one. Every coupling block sees
all scales at once: its subnets, laid out as in the authors' code
(marco-rudolph/cs-flow), convolve each scale on its own, then end with a
*cross convolution* that mixes each scale with its finer and coarser
neighbour, so the density of a location is estimated with both local and
global context.

The flow is a FrEIA ``GraphINN`` of, per block, one fixed random channel
permutation per scale followed by a :class:`CrossScaleCoupling`. All
parameters are convolution kernels, so one flow applies to maps of any
spatial size (see :class:`CrossScaleFlow`).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import weakref
from typing import Callable, Iterator, Sequence

import FrEIA.framework as Ff
import torch
import torch.nn.functional as F
from FrEIA.modules import InvertibleModule
from torch import Tensor, nn

from ._blocks import freeze_parameter_order

__all__ = [
    "ChannelPermutation",
    "CrossConvolution",
    "CrossConvolutionSubnet",
    "CrossScaleCoupling",
    "CrossScaleFlow",
    "CSFlowHead",
    "TAP_SUMS",
    "channel_major_flipped_weight",
    "tap_major_weight",
    "tap_sum",
    "upsampled_convolution",
    "csflow_anomaly_map",
    "csflow_anomaly_score",
    "csflow_nll",
]

LEAKY_RELU_SLOPE = 0.1


def soft_clamp(log_scale: Tensor, clamp: float) -> Tensor:
    """Squash log-scales smoothly into ``(-clamp, clamp)``.

    Parameters
    ----------
    log_scale : Tensor, any shape
        Raw log-scales predicted by a subnet.
    clamp : float
        Bound, > 0.

    Returns
    -------
    Tensor, same shape
        ``clamp * (2 / pi) * atan(log_scale / clamp)``; about
        ``(2 / pi) * log_scale`` for ``|log_scale| << clamp``.
    """
    return clamp * (2.0 / math.pi) * torch.atan(log_scale / clamp)


def _resize(maps: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinearly resize ``(n, c, h, w)`` maps to ``size = (H, W)``; no-op when already there."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    # align_corners=False maps the full extent of one grid onto the other, which
    # keeps scales registered when sizes are not exact halves (e.g. 7 -> 4).
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)


def _reset_conv_(conv: nn.Conv2d, generator: torch.Generator | None) -> None:
    """Re-draw ``conv``'s weights from ``generator`` with PyTorch's default distribution.

    The default ``Conv2d`` initialisation (Kaiming-uniform with ``a = sqrt(5)``
    for the weight) draws weight and bias from ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.
    Parameters on the ``meta`` device hold no values and are left alone, so a
    flow can be built there to count its parameters without allocating them.
    """
    bound = 1.0 / math.sqrt(conv.weight[0].numel())
    with torch.no_grad():
        for param in (conv.weight, conv.bias):
            if param is not None and not param.is_meta:
                # drawn on the CPU, where the generator lives, whatever device param is on
                values = torch.empty(param.shape, dtype=param.dtype, device="cpu")
                param.copy_(values.uniform_(-bound, bound, generator=generator))


def tap_major_weight(weight: Tensor) -> Tensor:
    """Kernel ``(out, in, k, k)`` -> ``(k * k * out, in, 1, 1)``: rows ``[t * out, (t + 1) * out)`` are tap ``t``'s."""
    out_channels, in_channels, k, _ = weight.shape
    return weight.permute(2, 3, 0, 1).reshape(k * k * out_channels, in_channels, 1, 1)


def channel_major_flipped_weight(weight: Tensor) -> Tensor:
    """Kernel ``(out, in, k, k)`` -> ``(out * k * k, in, 1, 1)``: row ``o * k * k + t`` is output ``o`` at tap ``k * k - 1 - t``.

    The layout ``F.fold`` sums: its block entry ``t`` lands ``t - k // 2``
    away from the block's position, the opposite of a convolution tap's
    offset, hence the flip.
    """
    out_channels, in_channels, k, _ = weight.shape
    return weight.flip(-2, -1).permute(0, 2, 3, 1).reshape(out_channels * k * k, in_channels, 1, 1)


#: How :func:`upsampled_convolution` sums its ``k * k`` shifted taps at inference (see :func:`tap_sum`).
TAP_SUMS = ("shifts", "fold")

_TAP_SUM: contextvars.ContextVar[str] = contextvars.ContextVar("skflow_ad_tap_sum", default="shifts")


@contextlib.contextmanager
def tap_sum(form: str) -> Iterator[None]:
    """Within the block, :func:`upsampled_convolution` sums its shifted taps as ``form``.

    Both forms compute the same function and differ in rounding only (the
    order of the float additions):

    - ``"shifts"`` (the default): ``k * k`` slices of the padded map added
      one by one; the fastest in eager torch and on OpenVINO;
    - ``"fold"``: one ``F.fold`` (ONNX ``Col2Im``), which ONNX Runtime runs
      faster than the slices, and whose graph exports in half the time.

    :func:`skflow_ad.export.export_onnx` picks the form of the runtime the
    graph is exported for; ``benchmarks/csflow_upconv.py`` times both.
    """
    if form not in TAP_SUMS:
        raise ValueError(f"form must be one of {', '.join(map(repr, TAP_SUMS))}; got {form!r}.")
    token = _TAP_SUM.set(form)
    try:
        yield
    finally:
        _TAP_SUM.reset(token)


# (id(weight), layout) -> (weak reference to the weight, (version, data pointer, dtype, device), copy). Keyed
# by id because tensors compare elementwise; an entry goes when its weight does (weakref.finalize).
_WEIGHT_LAYOUT_CACHE: dict[tuple[int, str], tuple] = {}


def _cached_layout(weight: Tensor, layout: Callable[[Tensor], Tensor]) -> Tensor:
    """``layout(weight)``, computed once per weight value outside of autograd and compilation.

    The permuted copy of a cold 1024-channel kernel costs about as much as the
    convolution it saves, so eager inference reuses it until the weight
    changes (in-place updates bump ``_version``, ``.to()`` makes a new tensor).
    Under ``torch.compile`` / ``torch.export`` the permutation stays in the
    graph, where the runtimes fold it into a constant.
    """
    if torch.compiler.is_compiling():
        return layout(weight)
    try:
        key = (weight._version, weight.data_ptr(), weight.dtype, weight.device)
    except RuntimeError:  # an inference tensor has no version counter: nothing tells when it changes
        return layout(weight)
    slot = (id(weight), layout.__name__)
    cached = _WEIGHT_LAYOUT_CACHE.get(slot)
    if cached is not None and cached[0]() is weight and cached[1] == key:
        return cached[2]
    if cached is None or cached[0]() is not weight:
        weakref.finalize(weight, _WEIGHT_LAYOUT_CACHE.pop, slot, None)
    copy = layout(weight.detach())
    _WEIGHT_LAYOUT_CACHE[slot] = (weakref.ref(weight), key, copy)
    return copy


def upsampled_convolution(conv: nn.Conv2d, coarse: Tensor, size: Sequence[int]) -> Tensor:
    """``conv(_resize(coarse, size))``, with the channel mixing done at the coarse scale.

    Resizing acts on each channel alone and a convolution mixes channels at
    each tap alone, so the two commute tap by tap: for a stride-1 convolution
    with zero padding ``k // 2``, weights ``W_t`` (one ``out x in`` matrix per
    tap ``t = (dy, dx)``) and bias ``b``,

        conv(up(x)) = b + sum_t shift_t(up(W_t x)),

    where ``shift_t`` moves a map by ``(k // 2 - dy, k // 2 - dx)`` and fills
    with zeros (the zero padding of ``up(x)``, which ``W_t`` maps to zero).
    The ``in x out`` products then run on the ``h x w`` coarse positions
    instead of the ``H x W`` fine ones, a quarter of the work for an exact
    doubling; resizing and shifting the ``k * k * out`` mixed channels is
    elementwise. The shifted sum is ``k * k`` slices or one ``F.fold``
    (:func:`tap_sum`). The result equals the direct form up to rounding.

    Only inference takes this route: with autograd on, the direct form is
    computed, whose backward is cheaper than this one's (pads, slices and
    the resize of ``k * k`` times more channels).

    Parameters
    ----------
    conv : nn.Conv2d
        Stride 1, odd square kernel ``k``, padding ``k // 2``, with a bias.
    coarse : Tensor, shape (n, in_channels, h, w)
    size : (H, W)
        The fine size ``coarse`` is resized to (bilinearly, as :func:`_resize`).

    Returns
    -------
    Tensor, shape (n, out_channels, H, W)
    """
    if torch.is_grad_enabled():
        return conv(_resize(coarse, size))
    k, out_channels = conv.kernel_size[0], conv.out_channels
    height, width = (int(v) for v in size)
    bias = conv.bias.view(1, -1, 1, 1)
    if _TAP_SUM.get() == "fold":
        mixed = F.conv2d(coarse, _cached_layout(conv.weight, channel_major_flipped_weight))
        mixed = _resize(mixed.contiguous(memory_format=torch.channels_last), size)
        blocks = mixed.reshape(mixed.shape[0], out_channels * k * k, height * width)
        return F.fold(blocks, (height, width), k, padding=k // 2) + bias
    mixed = F.conv2d(coarse, _cached_layout(conv.weight, tap_major_weight))
    # torch's bilinear resize of k * k * out contiguous small planes is slow on CPU (at a 12 x 12 coarse map
    # slower than the direct form); channels-last it is not.
    mixed = F.pad(_resize(mixed.contiguous(memory_format=torch.channels_last), size), [k // 2] * 4)
    out = bias
    for t in range(k * k):
        dy, dx = divmod(t, k)
        out = out + mixed[:, t * out_channels:(t + 1) * out_channels, dy:dy + height, dx:dx + width]
    return out.contiguous()


def _padded_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    """A biased convolution with padding ``kernel_size // 2`` (output ``ceil(h / stride)``)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)


def _check_layer_arguments(in_channels: Sequence[int], out_channels: Sequence[int], kernel_size: int) -> None:
    if len(in_channels) != len(out_channels):
        raise ValueError(
            f"in_channels and out_channels must have one entry per scale, "
            f"got {len(in_channels)} and {len(out_channels)}."
        )
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}.")


class CrossConvolution(nn.Module):
    """The cross-scale layer of CS-Flow: each scale receives its own map and its neighbours'.

    The output at scale ``i`` is the sum of

    - a convolution of scale ``i``,
    - a convolution of the next coarser scale ``i + 1`` *after* upsampling it
      bilinearly to the size of scale ``i`` (for sizes that are exact doubles,
      ``scale_factor=2``; at inference computed as :func:`upsampled_convolution`),
    - a stride-2 convolution of the next finer scale ``i - 1``, resized
      bilinearly to the size of scale ``i`` when the strided output
      (``ceil(h / 2)``) differs from it.

    Every convolution has kernel ``k``, padding ``k // 2`` and a bias, as in
    the authors' code: the biases of the summed terms are redundant, but they
    keep the architecture, and its parameter count, the original's.

    Parameters
    ----------
    in_channels : sequence of int
        Input channels per scale, finest first.
    out_channels : sequence of int
        Output channels per scale.
    kernel_size : int
        Odd kernel size of every convolution.
    generator : torch.Generator, optional
        Source of the initial weights; torch's global generator if None.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: Sequence[int],
        kernel_size: int,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        _check_layer_arguments(in_channels, out_channels, kernel_size)
        n_scales = len(in_channels)
        self.same_scale_convs = nn.ModuleList(
            _padded_conv(in_channels[i], out_channels[i], kernel_size) for i in range(n_scales)
        )
        # up_convs[i] carries scale i + 1 (upsampled) to scale i; down_convs[i] carries scale i down to i + 1.
        self.up_convs = nn.ModuleList(
            _padded_conv(in_channels[i + 1], out_channels[i], kernel_size) for i in range(n_scales - 1)
        )
        self.down_convs = nn.ModuleList(
            _padded_conv(in_channels[i], out_channels[i + 1], kernel_size, stride=2)
            for i in range(n_scales - 1)
        )
        for conv in [*self.same_scale_convs, *self.up_convs, *self.down_convs]:
            _reset_conv_(conv, generator)

    def forward(self, maps: Sequence[Tensor]) -> list[Tensor]:
        """Apply the layer.

        Parameters
        ----------
        maps : sequence of Tensor
            One ``(n, in_channels[i], h_i, w_i)`` map per scale, finest first.

        Returns
        -------
        list of Tensor
            One ``(n, out_channels[i], h_i, w_i)`` map per scale.
        """
        n_scales = len(maps)
        outputs = []
        for i, scale_map in enumerate(maps):
            size = scale_map.shape[-2:]
            out = self.same_scale_convs[i](scale_map)
            if i + 1 < n_scales:
                out = out + upsampled_convolution(self.up_convs[i], maps[i + 1], size)
            if i > 0:
                out = out + _resize(self.down_convs[i - 1](maps[i - 1]), size)
            outputs.append(out)
        return outputs


class CrossConvolutionSubnet(nn.Module):
    """The coupling subnet of CS-Flow, laid out as in the authors' code.

    1. per scale, a convolution to ``hidden_channels`` and LeakyReLU(0.1):
       no mixing of scales in this layer;
    2. a :class:`CrossConvolution` of the hidden maps to ``out_channels``;
    3. each scale's output times a learnable scalar gain initialised at zero,
       so a fresh subnet outputs zeros and a fresh coupling block is the identity.

    Information therefore crosses one scale per subnet: the output of scale
    ``i`` depends on the inputs of scales ``i - 1``, ``i`` and ``i + 1`` only.

    Parameters
    ----------
    in_channels : sequence of int
        Input channels per scale, finest first.
    out_channels : sequence of int
        Output channels per scale.
    hidden_channels : int
        Channels of the hidden maps at every scale.
    kernel_size : int
        Odd kernel size of all convolutions (padding ``kernel_size // 2``).
    generator : torch.Generator, optional
        Source of the initial weights.

    Attributes
    ----------
    input_convs : nn.ModuleList of nn.Conv2d
        The per-scale first layer.
    output_layer : CrossConvolution
        The cross-scale second layer.
    output_gains : nn.Parameter, shape (n_scales,)
        Per-scale factors on the output, zero at construction.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: Sequence[int],
        hidden_channels: int,
        kernel_size: int,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        _check_layer_arguments(in_channels, out_channels, kernel_size)
        n_scales = len(in_channels)
        self.input_convs = nn.ModuleList(
            _padded_conv(channels, hidden_channels, kernel_size) for channels in in_channels
        )
        for conv in self.input_convs:
            _reset_conv_(conv, generator)
        self.output_layer = CrossConvolution(
            [hidden_channels] * n_scales, out_channels, kernel_size, generator
        )
        self.output_gains = nn.Parameter(torch.zeros(n_scales))

    def forward(self, maps: Sequence[Tensor]) -> list[Tensor]:
        """Map ``(n, in_channels[i], h_i, w_i)`` per scale to ``(n, out_channels[i], h_i, w_i)``."""
        hidden = [F.leaky_relu(conv(x), LEAKY_RELU_SLOPE) for conv, x in zip(self.input_convs, maps)]
        outputs = self.output_layer(hidden)
        return [out * self.output_gains[i] for i, out in enumerate(outputs)]


class ChannelPermutation(InvertibleModule):
    """A fixed random permutation of the channels of one ``(n, c, h, w)`` input.

    Unlike FrEIA's ``PermuteRandom``, the permutation is drawn from a given
    ``torch.Generator`` (not by reseeding numpy's global generator) and kept
    as a buffer, so it moves with ``.to()`` and is not handed to optimisers.

    Parameters
    ----------
    dims_in : list of one tuple (c, h, w)
        FrEIA input dimensions.
    dims_c : list, optional
        Conditions; none are accepted.
    generator : torch.Generator, optional
        Source of the permutation; torch's global generator if None.
    """

    def __init__(self, dims_in, dims_c=None, generator: torch.Generator | None = None):
        super().__init__(dims_in, dims_c)
        if len(self.dims_in) != 1:
            raise ValueError(f"{type(self).__name__} takes exactly one input, got {len(self.dims_in)}.")
        if self.dims_c:
            raise ValueError(f"{type(self).__name__} takes no conditions.")
        n_channels = self.dims_in[0][0]
        permutation = torch.randperm(n_channels, generator=generator, device="cpu")
        self.register_buffer("permutation", permutation)
        self.register_buffer("inverse_permutation", torch.argsort(permutation))

    def forward(self, x_or_z, c=None, rev=False, jac=True):
        """Permute (``rev=False``) or un-permute channels; the log-determinant is 0."""
        (tensor,) = x_or_z
        index = self.inverse_permutation if rev else self.permutation
        log_jac_det = tensor.new_zeros(tensor.shape[0])
        return (tensor[:, index],), log_jac_det

    def output_dims(self, input_dims):
        return list(input_dims)


class CrossScaleCoupling(InvertibleModule):
    """Affine coupling block of CS-Flow over all scales at once.

    Each scale's channels are split into a first half ``x1`` (``c // 2``
    channels) and a second half ``x2`` (the rest). Both halves are transformed:

    1. ``s2, t2 = r2(x1)`` over all scales, ``y2 = x2 * exp(soft_clamp(s2)) + t2``,
    2. ``s1, t1 = r1(y2)`` over all scales, ``y1 = x1 * exp(soft_clamp(s1)) + t1``,

    where ``r1``, ``r2`` are :class:`CrossConvolutionSubnet` s. The output of
    scale ``i`` is ``cat(y1, y2)``; the log-determinant is the sum of all
    clamped log-scales.

    Parameters
    ----------
    dims_in : list of tuple (c_i, h_i, w_i)
        FrEIA input dimensions, one per scale, finest first; every ``c_i >= 2``.
        Only the channels are used: the block works on any spatial size.
    dims_c : list, optional
        Conditions; none are accepted.
    hidden_channels : int
        Hidden channels of the subnets.
    kernel_size : int
        Odd kernel size of the subnets' convolutions.
    clamp : float
        Bound of the soft clamping of the log-scales, > 0.
    generator : torch.Generator, optional
        Source of the initial weights.

    Attributes
    ----------
    second_half_subnet : CrossConvolutionSubnet
        ``r2``: predicts ``(s2, t2)`` from the first halves.
    first_half_subnet : CrossConvolutionSubnet
        ``r1``: predicts ``(s1, t1)`` from the transformed second halves.
    """

    def __init__(
        self,
        dims_in,
        dims_c=None,
        hidden_channels: int = 1024,
        kernel_size: int = 3,
        clamp: float = 3.0,
        generator: torch.Generator | None = None,
    ):
        super().__init__(dims_in, dims_c)
        if self.dims_c:
            raise ValueError(f"{type(self).__name__} takes no conditions.")
        channels = [int(dims[0]) for dims in self.dims_in]
        if min(channels) < 2:
            raise ValueError(f"Every scale needs at least 2 channels to be split, got {channels}.")
        if not clamp > 0:
            raise ValueError(f"clamp must be > 0, got {clamp}.")
        self.clamp = float(clamp)
        self.first_half_channels = [c // 2 for c in channels]
        self.second_half_channels = [c - c // 2 for c in channels]
        self.second_half_subnet = CrossConvolutionSubnet(
            self.first_half_channels,
            [2 * c for c in self.second_half_channels],
            hidden_channels,
            kernel_size,
            generator,
        )
        self.first_half_subnet = CrossConvolutionSubnet(
            self.second_half_channels,
            [2 * c for c in self.first_half_channels],
            hidden_channels,
            kernel_size,
            generator,
        )

    def _log_scales_and_shifts(self, subnet, conditions, transformed_channels):
        """Clamped log-scales and shifts, each ``(n, transformed_channels[i], h_i, w_i)`` per scale."""
        log_scales, shifts = [], []
        for params, n_channels in zip(subnet(conditions), transformed_channels):
            log_scales.append(soft_clamp(params[:, :n_channels], self.clamp))
            shifts.append(params[:, n_channels:])
        return log_scales, shifts

    def forward(self, x_or_z, c=None, rev=False, jac=True):
        """Transform all scales (``rev=False``) or invert the transformation.

        Parameters
        ----------
        x_or_z : sequence of Tensor
            One ``(n, c_i, h_i, w_i)`` tensor per scale.
        c : ignored
        rev : bool
            Invert instead of transforming.
        jac : bool
            Whether the log-determinant is wanted; it is cheap and always returned.

        Returns
        -------
        outputs : tuple of Tensor
            Same shapes as ``x_or_z``.
        log_jac_det : Tensor, shape (n,)
            ``log |det J|`` of the forward map, negated when ``rev=True``.
        """
        first = [t[:, :n] for t, n in zip(x_or_z, self.first_half_channels)]
        second = [t[:, n:] for t, n in zip(x_or_z, self.first_half_channels)]
        if not rev:
            s2, t2 = self._log_scales_and_shifts(self.second_half_subnet, first, self.second_half_channels)
            second = [x * torch.exp(s) + t for x, s, t in zip(second, s2, t2)]
            s1, t1 = self._log_scales_and_shifts(self.first_half_subnet, second, self.first_half_channels)
            first = [x * torch.exp(s) + t for x, s, t in zip(first, s1, t1)]
        else:
            s1, t1 = self._log_scales_and_shifts(self.first_half_subnet, second, self.first_half_channels)
            first = [(y - t) * torch.exp(-s) for y, s, t in zip(first, s1, t1)]
            s2, t2 = self._log_scales_and_shifts(self.second_half_subnet, first, self.second_half_channels)
            second = [(y - t) * torch.exp(-s) for y, s, t in zip(second, s2, t2)]
        outputs = tuple(torch.cat([a, b], dim=1) for a, b in zip(first, second))
        log_jac_det = sum(s.flatten(1).sum(dim=1) for s in [*s1, *s2])
        return outputs, (-log_jac_det if rev else log_jac_det)

    def output_dims(self, input_dims):
        return list(input_dims)


class CrossScaleFlow(nn.Module):
    """CS-Flow: permutations and cross-scale coupling blocks in a FrEIA ``GraphINN``.

    Before each of the ``n_coupling_blocks`` :class:`CrossScaleCoupling`
    blocks, the channels of every scale are shuffled by a fixed random
    :class:`ChannelPermutation`, drawn independently per scale and block.

    Shape handling: every parameter is a convolution kernel, so the flow is
    built in the constructor without knowing spatial sizes and applies to
    maps of any spatial size, each scale at least 1x1. The sizes need not be
    exact halves of each other: cross-scale contributions are resized
    bilinearly to the receiving scale's size. The FrEIA graph is declared with
    1x1 placeholder spatial dims, which FrEIA only uses to pass channel counts
    to the blocks.

    Parameters
    ----------
    n_channels : int or sequence of int
        Channels ``C`` of the feature maps (same for all scales, or one entry
        per scale); each >= 2.
    n_scales : int
        Number of scales, finest first (paper: 3).
    n_coupling_blocks : int
        Number of coupling blocks (paper: 4).
    hidden_channels : int
        Hidden channels of the subnets (paper: 1024).
    clamp : float
        Soft clamping bound of the log-scales (paper: 3).
    kernel_sizes : sequence of int, optional
        Kernel size of each block; default ``(3,) * (n_coupling_blocks - 1) + (5,)``.
    seed : int
        Seeds a private ``torch.Generator`` that draws the permutations and the
        initial convolution weights: two flows built with the same arguments
        are identical, whatever the state of the global generators.

    Attributes
    ----------
    graph : FrEIA.framework.GraphINN
        The invertible network; inputs ``features_scale{i}``, blocks
        ``permute{b}_scale{i}`` and ``coupling{b}``, outputs ``latent_scale{i}``.
    n_channels : tuple of int
        Channels per scale.
    kernel_sizes : tuple of int
        Kernel size of each block.
    coupling_blocks : list of CrossScaleCoupling
        The coupling blocks, first to last.
    permutations : list of list of ChannelPermutation
        ``permutations[block][scale]``.
    """

    def __init__(
        self,
        n_channels: int | Sequence[int],
        n_scales: int = 3,
        n_coupling_blocks: int = 4,
        hidden_channels: int = 1024,
        clamp: float = 3.0,
        kernel_sizes: Sequence[int] | None = None,
        seed: int = 0,
    ):
        super().__init__()
        if n_scales < 1:
            raise ValueError(f"n_scales must be >= 1, got {n_scales}.")
        if n_coupling_blocks < 1:
            raise ValueError(f"n_coupling_blocks must be >= 1, got {n_coupling_blocks}.")
        if hidden_channels < 1:
            raise ValueError(f"hidden_channels must be >= 1, got {hidden_channels}.")
        if isinstance(n_channels, int):
            n_channels = [n_channels] * n_scales
        self.n_channels = tuple(int(c) for c in n_channels)
        if len(self.n_channels) != n_scales:
            raise ValueError(f"n_channels has {len(self.n_channels)} entries for {n_scales} scales.")
        if kernel_sizes is None:
            kernel_sizes = (3,) * (n_coupling_blocks - 1) + (5,)
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)
        if len(self.kernel_sizes) != n_coupling_blocks:
            raise ValueError(
                f"kernel_sizes has {len(self.kernel_sizes)} entries for {n_coupling_blocks} blocks."
            )
        self.n_scales = n_scales
        self.n_coupling_blocks = n_coupling_blocks
        self.hidden_channels = hidden_channels
        self.clamp = float(clamp)
        self.seed = seed
        generator = torch.Generator().manual_seed(seed)
        self.graph = self._build_graph(generator)

    def _build_graph(self, generator: torch.Generator) -> Ff.GraphINN:
        inputs = [
            Ff.InputNode(channels, 1, 1, name=f"features_scale{i}")
            for i, channels in enumerate(self.n_channels)
        ]
        nodes = list(inputs)
        current = [(node, 0) for node in inputs]
        for block, kernel_size in enumerate(self.kernel_sizes):
            permutations = [
                Ff.Node(
                    current[i], ChannelPermutation, {"generator": generator}, name=f"permute{block}_scale{i}"
                )
                for i in range(self.n_scales)
            ]
            coupling = Ff.Node(
                [(node, 0) for node in permutations],
                CrossScaleCoupling,
                {
                    "hidden_channels": self.hidden_channels,
                    "kernel_size": kernel_size,
                    "clamp": self.clamp,
                    "generator": generator,
                },
                name=f"coupling{block}",
            )
            nodes += [*permutations, coupling]
            current = [(coupling, i) for i in range(self.n_scales)]
        nodes += [Ff.OutputNode(current[i], name=f"latent_scale{i}") for i in range(self.n_scales)]
        return freeze_parameter_order(Ff.GraphINN(nodes, force_tuple_output=True), nodes)

    @property
    def coupling_blocks(self) -> list[CrossScaleCoupling]:
        """The coupling blocks, first to last."""
        return [self.graph.get_module_by_name(f"coupling{b}") for b in range(self.n_coupling_blocks)]

    @property
    def permutations(self) -> list[list[ChannelPermutation]]:
        """``permutations[block][scale]``: the permutation applied before each block."""
        return [
            [self.graph.get_module_by_name(f"permute{b}_scale{s}") for s in range(self.n_scales)]
            for b in range(self.n_coupling_blocks)
        ]

    def _check_maps(self, maps: Sequence[Tensor], what: str) -> list[Tensor]:
        maps = list(maps)
        if len(maps) != self.n_scales:
            raise ValueError(f"Expected {self.n_scales} {what} maps (one per scale), got {len(maps)}.")
        for i, m in enumerate(maps):
            if m.ndim != 4:
                raise ValueError(f"{what} map {i} must be (n, C, h, w), got shape {tuple(m.shape)}.")
            if m.shape[1] != self.n_channels[i]:
                raise ValueError(
                    f"{what} map {i} has {m.shape[1]} channels, expected {self.n_channels[i]}."
                )
            if m.shape[0] != maps[0].shape[0]:
                raise ValueError(f"{what} maps have different batch sizes: {[t.shape[0] for t in maps]}.")
            if m.shape[2] < 1 or m.shape[3] < 1:
                raise ValueError(f"{what} map {i} has an empty spatial size {tuple(m.shape[2:])}.")
        return maps

    def forward(self, features: Sequence[Tensor]) -> tuple[list[Tensor], Tensor]:
        """Map feature maps to latents.

        Parameters
        ----------
        features : sequence of Tensor
            ``n_scales`` maps ``(n, C, h_i, w_i)``, finest first, any ``h_i, w_i >= 1``.

        Returns
        -------
        latents : list of Tensor
            Same shapes as ``features``.
        log_jac_det : Tensor, shape (n,)
            ``log |det d latents / d features|`` per sample.
        """
        features = self._check_maps(features, "feature")
        latents, log_jac_det = self.graph(features, jac=True)
        return list(latents), log_jac_det

    def inverse(self, latents: Sequence[Tensor]) -> list[Tensor]:
        """Map latents back to feature maps: the inverse of :meth:`forward`.

        Parameters
        ----------
        latents : sequence of Tensor
            ``n_scales`` maps ``(n, C, h_i, w_i)``, finest first.

        Returns
        -------
        list of Tensor
            The feature maps, same shapes as ``latents``.
        """
        latents = self._check_maps(latents, "latent")
        features, _ = self.graph(latents, rev=True, jac=False)
        return list(features)


def _n_latent_entries(latents: Sequence[Tensor]) -> int:
    return sum(z[0].numel() for z in latents)


def _squared_norms(latents: Sequence[Tensor]) -> Tensor:
    return sum(z.pow(2).flatten(1).sum(dim=1) for z in latents)


def csflow_nll(latents: Sequence[Tensor], log_jac_det: Tensor) -> Tensor:
    """Negative log-likelihood per latent dimension, per sample (up to a constant).

    Parameters
    ----------
    latents : sequence of Tensor
        Latent maps ``(n, C_i, h_i, w_i)`` of all scales.
    log_jac_det : Tensor, shape (n,)
        Log-determinant of each sample's forward map.

    Returns
    -------
    Tensor, shape (n,)
        ``(0.5 * sum(z ** 2) - log_jac_det) / D`` with ``D = sum_i C_i * h_i * w_i``.
        The standard normal's ``D / 2 * log(2 pi)`` is left out; average over
        the batch for the training loss.
    """
    return (0.5 * _squared_norms(latents) - log_jac_det) / _n_latent_entries(latents)


def csflow_anomaly_score(latents: Sequence[Tensor]) -> Tensor:
    """Image anomaly score: the mean of ``z ** 2 / 2`` over all latent entries of all scales.

    Parameters
    ----------
    latents : sequence of Tensor
        Latent maps ``(n, C_i, h_i, w_i)`` of all scales.

    Returns
    -------
    Tensor, shape (n,)
    """
    return 0.5 * _squared_norms(latents) / _n_latent_entries(latents)


def csflow_anomaly_map(
    latents: Sequence[Tensor], output_size: int | Sequence[int], mode: str = "all"
) -> Tensor:
    """Pixel anomaly map from the latents.

    Parameters
    ----------
    latents : sequence of Tensor
        Latent maps ``(n, C_i, h_i, w_i)``, finest first.
    output_size : int or (H, W)
        Size of the map, usually the image size.
    mode : {"all", "max"}
        ``"all"``: product over scales of the channel mean of ``z ** 2``, each
        upsampled bilinearly to ``output_size``. ``"max"``: the channel mean of
        ``z ** 2`` of the finest scale (scale 0, the largest map) only, upsampled.

    Returns
    -------
    Tensor, shape (n, H, W)
    """
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    output_size = tuple(int(v) for v in output_size)
    if mode == "all":
        used = list(latents)
    elif mode == "max":
        used = [latents[0]]
    else:
        raise ValueError(f"mode must be 'all' or 'max', got {mode!r}.")
    anomaly_map = None
    for z in used:
        scale_map = F.interpolate(
            z.pow(2).mean(dim=1, keepdim=True), size=output_size, mode="bilinear", align_corners=False
        )
        anomaly_map = scale_map if anomaly_map is None else anomaly_map * scale_map
    return anomaly_map[:, 0]


class CSFlowHead(nn.Module):
    """Latents -> ``(scores (n,), anomaly_maps (n, H, W))`` at ``working_size``.

    Scores are :func:`csflow_anomaly_score`, maps :func:`csflow_anomaly_map` in ``map_mode``.
    """

    def __init__(self, working_size, map_mode="all"):
        super().__init__()
        if map_mode not in ("all", "max"):
            raise ValueError(f"map_mode must be 'all' or 'max', got {map_mode!r}.")
        self.working_size = tuple(int(v) for v in working_size)
        self.map_mode = map_mode

    def forward(self, latents):
        return csflow_anomaly_score(latents), csflow_anomaly_map(latents, self.working_size, mode=self.map_mode)
