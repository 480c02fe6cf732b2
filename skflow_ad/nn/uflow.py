"""The U-shaped normalizing flow of U-Flow (arXiv 2211.12353), built with FrEIA."""

from __future__ import annotations

import math

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import numpy as np
import torch
from torch import nn

from ._blocks import AllInOneBlock, ConvSubnet, SubnetFactory, freeze_parameter_order, seeded


def upsampled_channels(channels):
    """Channels of a stage output sent up to the finer scale: about half, a multiple of 4.

    ``IRevNetUpsampling`` turns 4 channels into one at twice the resolution.
    """
    return max(4, (channels // 8) * 4)


class UFlowNet(nn.Module):
    """U-shaped flow: coarse-to-fine stages of FrEIA ``AllInOneBlock`` s.

    From the coarsest scale up, a stage of ``flow_steps`` blocks transforms the
    features; its output is split in two, one part leaving as that scale's
    latent, the other upsampled invertibly (IRevNet) and concatenated with the
    next finer scale's features, which enter the next stage. The finest stage's
    whole output is the finest latent. Subnets are conv-ReLU-conv with kernels
    alternating 3x3 and 1x1.

    Parameters
    ----------
    feature_shapes : list of (C, h, w)
        Shapes of the input maps, finest first; each coarser scale must be
        exactly half the size of the previous one.
    flow_steps : int
        ``AllInOneBlock`` s per stage.
    affine_subnet_channels_ratio : float
        Hidden channels of a subnet over its input channels.
    block_kwargs : dict
        Further ``AllInOneBlock`` arguments (``affine_clamping``, ``permute_soft``...).
    seed : int
        Seeds the random permutations and the initial weights.
    base_std : float
        Standard deviation of the Gaussian base the graph's outputs ``u`` are
        trained towards, ``N(0, base_std**2)``. ``forward`` returns the
        standardised latents ``z = u / base_std`` (standard normal under the
        model) and includes the log-determinant of that fixed scaling, so
        the model's density of the features stays exact and the loss is
        :func:`uflow_nll` of ``z`` whatever ``base_std``. Below 1 the graph
        has to contract the features.
    """

    def __init__(self, feature_shapes, flow_steps=4, affine_subnet_channels_ratio=1.0, block_kwargs=None, seed=0,
                 base_std=1.0):
        super().__init__()
        self.feature_shapes = [tuple(int(v) for v in s) for s in feature_shapes]
        check_uflow_shapes(self.feature_shapes)
        if not base_std > 0:
            raise ValueError(f"base_std must be positive; got {base_std!r}.")
        with seeded(seed):
            self.graph = self._build(flow_steps, affine_subnet_channels_ratio, dict(block_kwargs or {}))
        self.latent_shapes = [tuple(s) for s in self.graph.global_out_shapes]
        self.base_std = float(base_std)
        # log|det| of z = u / base_std over all latent dimensions of one sample.
        self.scaling_log_det = -sum(math.prod(shape) for shape in self.latent_shapes) * math.log(self.base_std)

    def _build(self, flow_steps, ratio, block_kwargs):
        shapes = self.feature_shapes
        inputs = [Ff.InputNode(*shape, name=f"features_{s}") for s, shape in enumerate(shapes)]
        nodes, outputs = [], {}
        current = inputs[-1]
        for scale in reversed(range(len(shapes))):
            for step in range(flow_steps):
                factory = SubnetFactory(ConvSubnet, kernel_size=3 if step % 2 == 0 else 1, hidden_ratio=ratio)
                current = Ff.Node(
                    current, AllInOneBlock, dict(subnet_constructor=factory, **block_kwargs),
                    name=f"flow_{scale}_{step}",
                )
                nodes.append(current)
            if scale == 0:
                outputs[0] = Ff.OutputNode(current, name="latent_0")
                break
            channels = current.output_dims[0][0]
            up = upsampled_channels(channels)
            split = Ff.Node(current, Fm.Split, {"section_sizes": [up, channels - up], "dim": 0}, name=f"split_{scale}")
            outputs[scale] = Ff.OutputNode(split.out1, name=f"latent_{scale}")
            upsample = Ff.Node(split.out0, Fm.IRevNetUpsampling, {}, name=f"up_{scale}")
            current = Ff.Node([inputs[scale - 1].out0, upsample.out0], Fm.Concat, {"dim": 0}, name=f"concat_{scale - 1}")
            nodes.extend([split, upsample, current])
        graph = Ff.GraphINN(inputs + nodes + [outputs[s] for s in range(len(shapes))])
        return freeze_parameter_order(graph, nodes)

    def forward(self, features):
        """Features, finest first, -> (standardised latents finest first, log|det J| of shape ``(n,)``)."""
        latents, log_jac_det = self.graph(list(features))
        if self.base_std == 1.0:
            return list(latents), log_jac_det
        return [u / self.base_std for u in latents], log_jac_det + self.scaling_log_det

    def inverse(self, latents):
        """Standardised latents, finest first, -> the features they come from."""
        features, _ = self.graph([z * self.base_std for z in latents], rev=True, jac=False)
        return list(features)


def check_uflow_shapes(shapes):
    """Raise ``ValueError`` unless each coarser map is exactly half the previous one."""
    if not shapes:
        raise ValueError("U-Flow needs at least one feature map.")
    for finer, coarser in zip(shapes, shapes[1:]):
        if (coarser[1] * 2, coarser[2] * 2) != tuple(finer[1:]):
            raise ValueError(
                f"U-Flow needs each feature map to be exactly half the size of the previous "
                f"one; got spatial sizes {[tuple(s[1:]) for s in shapes]}. Choose an image_size "
                f"divisible by the backbone's largest stride."
            )
    if len(shapes) > 1 and shapes[-1][0] < 5:
        raise ValueError(f"U-Flow's coarsest feature map needs at least 5 channels; got {shapes[-1][0]}.")


def check_scale_weights(scale_weights, n_scales):
    """Raise ``ValueError`` unless ``scale_weights`` is None or ``n_scales`` finite weights >= 0, not all 0."""
    if scale_weights is None:
        return
    try:
        weights = np.asarray(scale_weights, dtype=float)
    except (TypeError, ValueError):
        weights = np.asarray([])
    if weights.shape != (n_scales,) or not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(
            f"map_scale_weights={scale_weights!r}: give {n_scales} finite weights >= 0, one per feature scale "
            f"(finest first), not all zero, e.g. {(1.0,) + (0.5,) * (n_scales - 1)}; or None for equal weights."
        )


def uflow_nll(latents, log_jac_det):
    """Per-sample loss ``0.5 * sum(z**2) - log|det J|``, shape ``(n,)``."""
    squared = sum(z.pow(2).flatten(1).sum(1) for z in latents)
    return 0.5 * squared - log_jac_det


def uflow_likelihood_maps(latents, temperature=1.0):
    """Per-scale likelihood ``exp(-0.5 * mean_c z**2 / temperature)``, each ``(n, h_s, w_s)``."""
    return [torch.exp(-0.5 / temperature * z.pow(2).mean(1)) for z in latents]


def uflow_anomaly_map(latents, output_size, temperature=1.0, scale_weights=None):
    """``1 - weighted mean over scales of the upsampled likelihood maps``, shape ``(n, H, W)``.

    ``temperature`` flattens the likelihoods (above 1) so that strong anomalies
    at one scale do not all saturate at 1; :class:`UFlowHead` sets it to
    ``base_std**-2``, which makes the map the paper's formula on the flow's
    unstandardised outputs ``u = base_std * z``. ``scale_weights`` (one
    non-negative weight per scale, finest first; None: equal weights, the
    paper's mean) weighs the scales; a zero weight leaves a scale out.
    """
    weights = [1.0] * len(latents) if scale_weights is None else [float(w) for w in scale_weights]
    if len(weights) != len(latents):
        raise ValueError(f"scale_weights has {len(weights)} entries for {len(latents)} scales.")
    total = None
    for weight, likelihood in zip(weights, uflow_likelihood_maps(latents, temperature)):
        if weight == 0.0:
            continue
        up = nn.functional.interpolate(likelihood[:, None], size=tuple(output_size), mode="bilinear", align_corners=False)
        total = weight * up if total is None else total + weight * up
    return 1.0 - total[:, 0] / sum(weights)


class UFlowHead(nn.Module):
    """Standardised latents -> ``(scores (n,), anomaly_maps (n, H, W))`` at ``working_size``.

    The map is :func:`uflow_anomaly_map` at ``temperature = base_std**-2``
    with ``scale_weights``, less ``map_reference`` (an ``(H, W)`` map
    subtracted from every map, e.g. the mean map of the training images) when
    given; the image anomaly score is the map's maximum.
    """

    def __init__(self, working_size, base_std=1.0, scale_weights=None, map_reference=None):
        super().__init__()
        self.working_size = tuple(int(v) for v in working_size)
        self.temperature = float(base_std) ** -2
        self.scale_weights = None if scale_weights is None else tuple(float(w) for w in scale_weights)
        if map_reference is not None:
            map_reference = torch.as_tensor(map_reference, dtype=torch.float32)
            if tuple(map_reference.shape) != self.working_size:
                raise ValueError(f"map_reference has shape {tuple(map_reference.shape)}, not the working size "
                                 f"{self.working_size}.")
        self.register_buffer("map_reference", map_reference)

    def forward(self, latents):
        maps = uflow_anomaly_map(latents, self.working_size, self.temperature, self.scale_weights)
        if self.map_reference is not None:
            maps = maps - self.map_reference
        return maps.flatten(1).amax(1), maps
