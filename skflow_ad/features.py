"""Frozen feature extractors: images ``(n, 3, H, W)`` to lists of feature maps.

The contract of an extractor (:class:`FeatureExtractor`), which the detectors
rely on:

- it is an ``nn.Module`` in eval mode with gradients disabled;
- ``mean`` and ``std`` (3-tuples) say how it wants its input normalised:
  images in [0, 1] become ``(images - mean) / std`` before ``forward``;
- ``feature_shapes(working_size)`` says the ``(C, h, w)`` of every map it
  returns for images of that size, finest first, *before* any image is
  processed, so that a working size the flow cannot use fails at once (as
  timm's ``feature_info`` does for its models); ``strides`` gives the
  downsampling factor of each map when it is fixed (None otherwise);
- ``forward(images)`` returns the list of maps ``(n, C_s, h_s, w_s)``,
  finest scale first, of those shapes.

Extractors are built without network access when ``pretrained`` is ``False`` or
a local file; with ``pretrained=True`` timm downloads ImageNet weights and a
failed download raises :class:`PretrainedWeightsError` saying what to do.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The U-Flow paper's multi-scale CaiT: (timm name, input size, last block index).
MCAIT_MODELS = (("cait_m48_448", 448, 40), ("cait_s24_224", 224, 20))

#: CS-Flow's backbone architecture in timm: EfficientNet-B5 with TensorFlow "same" padding.
CSFLOW_ARCHITECTURE = "tf_efficientnet_b5"
#: The timm pretrained tag of the weights the CS-Flow authors used. Their code loads
#: ``efficientnet_pytorch``'s ``EfficientNet.from_pretrained('efficientnet-b5')``, whose
#: file (``efficientnet-b5-b6417697.pth``, since August 2019) was converted from the
#: TensorFlow checkpoints trained on ImageNet-1k with AutoAugment (its README: "all
#: pretrained models have been updated to use AutoAugment preprocessing"; its conversion
#: script downloads tensorflow/tpu's ``ckptsaug`` release). timm ports the same
#: checkpoints as ``aa_in1k`` ("trained on ImageNet-1k with auto-augment in Tensorflow by
#: paper authors"), normalised with the ImageNet mean and std as in the authors' code.
#: timm's default tag for ``tf_efficientnet_b5`` holds other weights: Noisy Student
#: (``ns_jft_in1k``, trained with JFT-300M pseudo-labels).
CSFLOW_WEIGHTS_TAG = "aa_in1k"
#: The timm name CS-Flow requests: architecture and weights tag.
CSFLOW_BACKBONE = f"{CSFLOW_ARCHITECTURE}.{CSFLOW_WEIGHTS_TAG}"
#: The ``tf_efficientnet_b5`` weight tags of timm 1.0 that ``CSFlowDetector`` accepts:
#: AutoAugment (the authors'), Noisy Student, RandAugment, AdvProp (inputs normalised to
#: [-1, 1]) and the first, baseline-preprocessing TensorFlow release.
CSFLOW_WEIGHTS_TAGS = ("aa_in1k", "ns_jft_in1k", "ra_in1k", "ap_in1k", "in1k")
#: CS-Flow: EfficientNet-B5 output of stage 6 (its last block, index 8), stride 32.
CSFLOW_STAGE = 5


class PretrainedWeightsError(RuntimeError):
    """The pretrained weights of a backbone could not be obtained."""


def _read_state_dict(path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file {str(path)!r} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{str(path)!r} does not hold a state dict (got {type(state).__name__}).")
    return state


def _load_weights(model, path, model_name):
    """Load a local state dict into ``model``, ignoring heads the extractor drops."""
    state = _read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise ValueError(
            f"weights file {str(path)!r} does not match backbone {model_name!r}: "
            f"{len(missing)} parameters missing, e.g. {missing[:3]}."
        )
    bad_shapes = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad_shapes:
        raise ValueError(
            f"weights file {str(path)!r} does not match backbone {model_name!r}: "
            f"shape mismatch for {bad_shapes[:3]}."
        )
    model.load_state_dict({k: state[k] for k in own})


def create_timm_model(model_name, pretrained, **kwargs):
    """Create a timm model with ImageNet weights, a local weights file or none.

    Parameters
    ----------
    model_name : str
        A timm model name.
    pretrained : bool or path-like
        ``True`` downloads ImageNet weights, ``False`` keeps random weights, a
        path loads a state dict saved with ``torch.save(model.state_dict())`` or
        a ``.safetensors`` file.
    **kwargs
        Passed to :func:`timm.create_model` (e.g. ``features_only``).
    """
    import timm

    if pretrained is True:
        try:
            return timm.create_model(model_name, pretrained=True, **kwargs)
        except Exception as exc:  # network, hub or cache errors all mean the same to the user
            raise PretrainedWeightsError(
                f"Could not download the ImageNet weights of backbone {model_name!r} "
                f"({type(exc).__name__}: {exc}). On a machine without internet access, "
                f"save them on a connected machine with "
                f"torch.save(timm.create_model({model_name!r}, pretrained=True).state_dict(), "
                f"'{model_name}.pth') and pass pretrained='path/to/{model_name}.pth' "
                f"(for backbone='mcait', a folder holding one such file per model), "
                f"or pass pretrained=False to use random weights (much weaker features)."
            ) from exc
    model = timm.create_model(model_name, pretrained=False, **kwargs)
    if pretrained is not False:
        path = Path(pretrained)
        if path.is_dir():
            candidates = [path / f"{model_name}{ext}" for ext in (".pth", ".pt", ".bin", ".safetensors")]
            found = [p for p in candidates if p.is_file()]
            if not found:
                raise FileNotFoundError(
                    f"no weights for {model_name!r} in folder {str(path)!r}: expected one of "
                    f"{[p.name for p in candidates]}."
                )
            path = found[0]
        _load_weights(model, path, model_name)
    return model


def _ceil_div(size, stride):
    return -(-size // stride)


def probe_feature_shapes(module, working_size):
    """``(C, h, w)`` of each map ``module`` returns for one blank image of ``working_size``.

    For modules that do not declare their shapes: one forward pass of a single
    zero image, on the module's device, before any real image is processed.
    """
    parameter = next(iter(module.parameters()), None)
    device = parameter.device if parameter is not None else "cpu"
    with torch.inference_mode():
        maps = module(torch.zeros(1, 3, *working_size, device=device))
    if isinstance(maps, torch.Tensor):
        maps = [maps]
    return [tuple(int(v) for v in m.shape[1:]) for m in maps]


class FeatureExtractor(nn.Module):
    """Base class of the frozen extractors: the contract of the module docstring.

    Subclasses set ``mean``, ``std`` and ``strides`` and implement
    ``forward``; ``feature_shapes`` defaults to a probe with one blank image
    (:func:`probe_feature_shapes`) and should be overridden with the declared
    shapes when they are known.
    """

    mean = IMAGENET_MEAN
    std = IMAGENET_STD
    #: Downsampling factor of each returned map, finest first, or None when not fixed.
    strides = None

    def feature_shapes(self, working_size):
        """``[(C, h, w), ...]`` of the maps for images of ``working_size = (H, W)``, finest first."""
        return probe_feature_shapes(self, tuple(working_size))

    def calibrate(self, features):
        """Fit a fixed normalisation of the features on the training features; identity by default.

        Parameters
        ----------
        features : list of Tensor
            Per-scale training features ``(n, C_s, h_s, w_s)`` as ``forward`` returned them.

        Returns
        -------
        list of Tensor
            The features as ``forward`` returns them from now on.
        """
        return features


def freeze(module):
    """Put ``module`` in eval mode with gradients off; returns it."""
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


#: ``backbone_batchnorm`` options of the detectors.
BACKBONE_BATCHNORM_OPTIONS = ("frozen", "recalibrate")


def batchnorm_layers(module):
    """The BatchNorm layers of ``module`` that keep running statistics (timm's ``BatchNormAct2d`` included)."""
    kinds = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
    return [m for m in module.modules() if isinstance(m, kinds) and m.track_running_stats]


class BatchNormRecalibration:
    """Re-estimate the running statistics of a frozen network's BatchNorm layers on new data.

    Inside ``with BatchNormRecalibration(module):`` the BatchNorm layers (and
    only they) are in training mode, so each normalises a batch with that
    batch's own statistics and the layers after it see inputs normalised as
    they will be; every forward pass adds, per layer and channel, the float64
    sum and sum of squares of the layer's input over the batch and positions.
    On leaving the block each layer's ``running_mean`` and ``running_var``
    (unbiased, as PyTorch keeps it) are the statistics of all inputs seen,
    and the module is frozen again (eval mode). This is adaptive batch
    normalisation (AdaBN, Li et al., arXiv 1603.04779): weights unchanged,
    normalisation statistics of the data at hand.

    Parameters
    ----------
    module : nn.Module
        A frozen network with at least one BatchNorm layer (``ValueError``
        otherwise, before any pass).
    """

    def __init__(self, module):
        self.module = module
        self.layers = batchnorm_layers(module)
        if not self.layers:
            raise ValueError(
                f"backbone_batchnorm='recalibrate' needs BatchNorm layers, and this backbone "
                f"({type(module).__name__}) has none; use backbone_batchnorm='frozen'."
            )
        self._sums = {}
        self._hooks = []
        self._saved = []

    def _accumulate(self, layer, inputs):
        x = inputs[0].detach().double()
        dims = [d for d in range(x.dim()) if d != 1]
        count, total, squares = self._sums.get(layer, (0, 0.0, 0.0))
        self._sums[layer] = (count + x.numel() // x.shape[1], total + x.sum(dims), squares + x.pow(2).sum(dims))

    def __enter__(self):
        self._saved = [(layer.momentum, layer.num_batches_tracked.clone()) for layer in self.layers]
        for layer in self.layers:
            layer.train()
            layer.momentum = 0.0  # training-mode passes leave the running statistics alone
            self._hooks.append(layer.register_forward_pre_hook(self._accumulate))
        return self

    def __exit__(self, *exc_info):
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        for layer, (momentum, batches) in zip(self.layers, self._saved):
            layer.momentum = momentum
            layer.num_batches_tracked.copy_(batches)
        freeze(self.module)
        if exc_info[0] is not None:
            return False  # statistics as they were: the block failed
        # Layers the forward pass never reaches (a truncated trunk's tail) keep their statistics.
        with torch.no_grad():
            for layer, (count, total, squares) in self._sums.items():
                mean = total / count
                variance = (squares - count * mean.pow(2)).clamp_min(0) / max(count - 1, 1)
                layer.running_mean.copy_(mean)
                layer.running_var.copy_(variance)
        return False


def _per_scale_norm(maps):
    # Parameter-free layer norm over (C, h, w): keeps the features frozen, hence cacheable.
    return [F.layer_norm(m, m.shape[1:]) for m in maps]


class TimmFeaturePyramid(FeatureExtractor):
    """Maps of a timm CNN at three strides (ResNet: layer1-layer3), layer-normed.

    Parameters
    ----------
    model_name : str
        Any timm model that supports ``features_only``.
    pretrained : bool or path-like
        See :func:`create_timm_model`.
    out_indices : tuple of int
        timm feature indices; ``(1, 2, 3)`` is strides 4, 8, 16 on ResNets.
    """

    def __init__(self, model_name, pretrained, out_indices=(1, 2, 3)):
        super().__init__()
        self.model_name = model_name
        self.body = freeze(
            create_timm_model(model_name, pretrained, features_only=True, out_indices=out_indices)
        )
        cfg = self.body.pretrained_cfg or {}
        self.mean = tuple(cfg.get("mean", IMAGENET_MEAN))
        self.std = tuple(cfg.get("std", IMAGENET_STD))
        self.channels = tuple(self.body.feature_info.channels())
        self.strides = tuple(self.body.feature_info.reduction())

    def feature_shapes(self, working_size):
        """Declared by timm's ``feature_info``: ``(C_s, ceil(H / r_s), ceil(W / r_s))``."""
        height, width = working_size
        return [(c, _ceil_div(height, r), _ceil_div(width, r)) for c, r in zip(self.channels, self.strides)]

    def forward(self, images):
        """``(n, 3, H, W)`` normalized images -> list of ``(n, C_s, H/r_s, W/r_s)``."""
        return _per_scale_norm(self.body(images))


class _CaiTTokenMaps(nn.Module):
    """Patch tokens of a CaiT after a given block, with the model's final norm."""

    def __init__(self, model_name, pretrained, input_size, last_block):
        super().__init__()
        model = create_timm_model(model_name, pretrained)
        if last_block >= len(model.blocks):
            raise ValueError(f"{model_name} has {len(model.blocks)} blocks; block {last_block} requested.")
        self.input_size = input_size
        self.patch_embed = model.patch_embed
        self.pos_embed = model.pos_embed
        # Blocks after `last_block`, the class-attention blocks and the head are never used.
        self.blocks = model.blocks[: last_block + 1]
        self.norm = model.norm
        self.grid = self.patch_embed.grid_size
        freeze(self)

    def forward(self, images):
        if tuple(images.shape[-2:]) != (self.input_size, self.input_size):
            images = F.interpolate(
                images, size=(self.input_size, self.input_size), mode="bicubic", align_corners=False
            )
        tokens = self.norm(self.blocks(self.patch_embed(images) + self.pos_embed))
        n, _, dim = tokens.shape
        return tokens.transpose(1, 2).reshape(n, dim, *self.grid)


class MultiScaleCaiT(FeatureExtractor):
    """The U-Flow paper's extractor: CaiT-M48 at 448 px and CaiT-S24 at 224 px.

    Returns two maps, ``(n, 768, 28, 28)`` and ``(n, 384, 14, 14)``, whatever
    the working size (each CaiT resizes its input to its own size).
    """

    def __init__(self, pretrained, models=MCAIT_MODELS):
        super().__init__()
        self.models = nn.ModuleList(
            _CaiTTokenMaps(name, pretrained, size, block) for name, size, block in models
        )
        self.mean = IMAGENET_MEAN
        self.std = IMAGENET_STD

    def feature_shapes(self, working_size):
        """Fixed token grids: ``(embed_dim, grid_h, grid_w)`` per CaiT."""
        return [(int(m.pos_embed.shape[-1]), *(int(g) for g in m.grid)) for m in self.models]

    def forward(self, images):
        return [model(images) for model in self.models]


class UserBackbone(FeatureExtractor):
    """Wrap a user's module returning a list of maps; sorted finest first, frozen.

    The module may declare ``mean`` and ``std`` (its input normalisation,
    ImageNet's by default); its feature shapes are probed with one blank image
    before training (:func:`probe_feature_shapes`).
    """

    def __init__(self, module):
        super().__init__()
        self.module = freeze(module)
        self.mean = tuple(getattr(module, "mean", IMAGENET_MEAN))
        self.std = tuple(getattr(module, "std", IMAGENET_STD))

    def feature_shapes(self, working_size):
        return sorted(probe_feature_shapes(self.module, tuple(working_size)), key=lambda s: -s[1] * s[2])

    def forward(self, images):
        maps = self.module(images)
        if isinstance(maps, torch.Tensor):
            maps = [maps]
        maps = list(maps)
        if not maps or any(not isinstance(m, torch.Tensor) or m.ndim != 4 for m in maps):
            raise ValueError(
                "a backbone module must return a list of 4-d feature maps (n, C, h, w)."
            )
        return sorted(maps, key=lambda m: -m.shape[-1] * m.shape[-2])


class EfficientNetStage(nn.Module):
    """EfficientNet trunk up to the end of one stage (CS-Flow: B5 stage 6, 304 ch, stride 32).

    ``forward`` takes one image batch and returns its single map ``(n, C, H/32, W/32)``.

    Parameters
    ----------
    pretrained : bool or path-like
        See :func:`create_timm_model`; with ``True`` timm downloads the weights of
        ``model_name``'s tag.
    model_name : str, default=CSFLOW_BACKBONE
        A timm name with its pretrained tag, ``"architecture.tag"``: the tag selects
        the weights and the input normalisation (``mean``, ``std`` of its
        ``pretrained_cfg``), also when the weights come from a local file.
    stage : int, default=CSFLOW_STAGE
        Index of the last stage kept.

    Attributes
    ----------
    model_name : str
        The timm name requested.
    pretrained_tag : str or None
        The tag of the ``pretrained_cfg`` timm resolved for ``model_name``.
    mean, std : tuple of float
        Input normalisation of that tag.
    output_channels, output_stride : int
        Channels of the output map and its downsampling (ceil division).
    """

    def __init__(self, pretrained, model_name=CSFLOW_BACKBONE, stage=CSFLOW_STAGE):
        super().__init__()
        model = create_timm_model(model_name, pretrained)
        self.model_name = model_name
        self.stem = nn.Sequential(model.conv_stem, model.bn1)  # timm's bn1 applies the SiLU too
        self.blocks = model.blocks[: stage + 1]
        cfg = model.pretrained_cfg or {}
        self.pretrained_tag = cfg.get("tag")
        self.mean = tuple(cfg.get("mean", IMAGENET_MEAN))
        self.std = tuple(cfg.get("std", IMAGENET_STD))
        #: Declared shape of the output: channels, and the downsampling ("same" padding: ceil).
        self.output_channels = self.blocks[-1][-1].conv_pwl.out_channels
        self.output_stride = 2 * math.prod(
            block[0].conv_dw.stride[0] if hasattr(block[0], "conv_dw") else 1 for block in self.blocks
        )
        freeze(self)

    def forward(self, images):
        return self.blocks(self.stem(images))


class ImagePyramidFeatures(FeatureExtractor):
    """One CNN applied to the image at full, half and quarter size (CS-Flow).

    Returns ``n_scales`` maps, finest (full image) first, each standardised
    per channel with statistics set by :meth:`calibrate` (identity until then).
    The image of scale ``s`` is the ``(H // 2**s, W // 2**s)`` nearest-neighbour
    resize of the full image, ``F.interpolate(images, size)`` with its default
    mode, as in the authors' code and anomalib (for sizes divisible by ``2**s``:
    every ``2**s``-th pixel of the full image, no smoothing).
    """

    def __init__(self, trunk, n_scales=3):
        super().__init__()
        self.trunk = trunk
        self.n_scales = n_scales
        self.mean = getattr(trunk, "mean", IMAGENET_MEAN)
        self.std = getattr(trunk, "std", IMAGENET_STD)
        out_channels = getattr(trunk, "output_channels", None)
        if out_channels is None:
            with torch.no_grad():
                out_channels = trunk(torch.zeros(1, 3, 64, 64)).shape[1]
        for scale in range(n_scales):
            self.register_buffer(f"channel_mean_{scale}", torch.zeros(out_channels))
            self.register_buffer(f"channel_std_{scale}", torch.ones(out_channels))

    def calibrate(self, features):
        """Set the per-channel statistics from training features and return them standardised.

        Parameters
        ----------
        features : list of Tensor
            Raw per-scale maps ``(n, C, h_s, w_s)`` of the training images, in
            any float dtype (returned in the same dtype).
        """
        standardised = []
        for scale, stored in enumerate(features):
            maps = stored.float()  # statistics in float32 whatever the cache's dtype
            mean = maps.mean(dim=(0, 2, 3))
            std = floored_std(maps.std(dim=(0, 2, 3)), float(maps.abs().max()))
            getattr(self, f"channel_mean_{scale}").copy_(mean)
            getattr(self, f"channel_std_{scale}").copy_(std)
            standardised.append(self._standardise(maps, scale).to(stored.dtype))
        return standardised

    def pyramid_sizes(self, working_size):
        """``(h, w)`` of the image at each scale: the working size halved ``s`` times (floored)."""
        height, width = working_size
        return [(height // 2**scale, width // 2**scale) for scale in range(self.n_scales)]

    def feature_shapes(self, working_size):
        """Declared from the trunk's ``output_stride`` and ``output_channels`` when it has them, else probed."""
        stride = getattr(self.trunk, "output_stride", None)
        channels = getattr(self.trunk, "output_channels", None)
        if stride is None or channels is None:
            return [probe_feature_shapes(self.trunk, size)[0] for size in self.pyramid_sizes(working_size)]
        return [(channels, _ceil_div(h, stride), _ceil_div(w, stride)) for h, w in self.pyramid_sizes(working_size)]

    def _standardise(self, maps, scale):
        mean = getattr(self, f"channel_mean_{scale}").to(maps.device).view(1, -1, 1, 1)
        std = getattr(self, f"channel_std_{scale}").to(maps.device).view(1, -1, 1, 1)
        return (maps - mean) / std

    def forward(self, images):
        maps = []
        for scale, size in enumerate(self.pyramid_sizes(images.shape[-2:])):
            images_s = F.interpolate(images, size=size, mode="nearest") if scale else images
            maps.append(self._standardise(self.trunk(images_s), scale))
        return maps


#: Modes of :class:`FeatureStandardizer`: over what the statistics are taken.
STANDARDIZER_MODES = ("channel", "position")

#: A feature whose spread is below this share of the largest magnitude of its scale counts as constant.
RELATIVE_STD_FLOOR = 1e-6

#: Training images per chunk when standardising cached features (bounds the float64 temporaries).
STATISTICS_CHUNK_ROWS = 64


def floored_std(std, largest_magnitude):
    """``std`` raised to :data:`RELATIVE_STD_FLOOR` times ``largest_magnitude`` (constant features stay finite)."""
    return std.clamp_min(RELATIVE_STD_FLOOR * largest_magnitude + 1e-12)


class FeatureStandardizer(nn.Module):
    """A fixed affine map per scale, ``(x - mean) / std``, with statistics fitted on training features.

    A fixed affine map of a normalizing flow's input changes its
    log-likelihood by a constant only; it moves the features to where the
    flow's initialisation expects them, and the ``"position"`` mode also
    removes what all training images share at one place (a CNN's zero padding
    at the borders, vignetting, a fixture), which the flow would otherwise
    have to learn.

    Parameters
    ----------
    feature_shapes : list of (C, h, w)
        Shapes of the maps it standardises, finest first.
    mode : {"channel", "position"}
        ``"channel"``: mean and std of each channel over all images and
        positions (statistics of shape ``(C, 1, 1)``); ``"position"``: of each
        channel at each position, over the images (statistics ``(C, h, w)``,
        so for one working resolution).

    Notes
    -----
    The map is the identity until :meth:`fit`. The statistics are buffers
    ``mean_<s>`` and ``std_<s>`` (one pair per scale ``s``) whose shapes
    follow from ``feature_shapes`` and ``mode``, so they travel with
    ``state_dict`` (loaded strictly) and pickles. A std below
    :data:`RELATIVE_STD_FLOOR` times the largest magnitude of the scale's
    training features (a constant feature) is raised to that floor.
    """

    def __init__(self, feature_shapes, mode):
        super().__init__()
        if mode not in STANDARDIZER_MODES:
            raise ValueError(f"mode must be one of {STANDARDIZER_MODES}; got {mode!r}.")
        self.mode = mode
        self.feature_shapes = [tuple(int(v) for v in shape) for shape in feature_shapes]
        for scale, (channels, height, width) in enumerate(self.feature_shapes):
            shape = (channels, 1, 1) if mode == "channel" else (channels, height, width)
            self.register_buffer(f"mean_{scale}", torch.zeros(shape))
            self.register_buffer(f"std_{scale}", torch.ones(shape))

    @torch.no_grad()
    def fit(self, features):
        """Set the statistics from training features and standardise those features in place.

        Parameters
        ----------
        features : list of Tensor
            Per-scale maps ``(n, C_s, h_s, w_s)`` of the training images, of
            the declared shapes, in any float dtype (statistics in float64).

        Returns
        -------
        list of Tensor
            The same tensors, standardised, in their own dtype.
        """
        shapes = [tuple(maps.shape[1:]) for maps in features]
        if shapes != self.feature_shapes:
            raise ValueError(f"features of shapes {shapes} do not match the declared {self.feature_shapes}.")
        for scale, maps in enumerate(features):
            mean, std = self._statistics(maps)
            getattr(self, f"mean_{scale}").copy_(mean)
            getattr(self, f"std_{scale}").copy_(std)
            # Cached features are inference tensors: writable in inference mode only.
            with torch.inference_mode():
                for start in range(0, len(maps), STATISTICS_CHUNK_ROWS):
                    rows = maps[start : start + STATISTICS_CHUNK_ROWS]
                    rows.copy_((rows.float() - mean) / std)  # as forward does, on the cache's device
        return features

    def _chunks(self, maps):
        return [maps[i : i + STATISTICS_CHUNK_ROWS] for i in range(0, len(maps), STATISTICS_CHUNK_ROWS)]

    def _statistics(self, maps):
        """float32 mean and unbiased std of ``maps`` over the mode's dimensions, summed by chunks in float64."""
        dims, keep = ((0, 2, 3), (-1, 1, 1)) if self.mode == "channel" else ((0,), maps.shape[1:])
        count = len(maps) * (maps.shape[2] * maps.shape[3] if self.mode == "channel" else 1)
        chunks = self._chunks(maps)
        mean = (sum(c.double().sum(dim=dims) for c in chunks) / count).reshape(keep)
        squares = sum((c.double() - mean).pow(2).sum(dim=dims) for c in chunks).reshape(keep)
        std = floored_std((squares / max(count - 1, 1)).sqrt(), max(float(c.abs().max()) for c in chunks))
        return mean.float(), std.float()

    def forward(self, features):
        """Per-scale maps ``(n, C_s, h_s, w_s)`` -> the same maps standardised."""
        return [
            (maps - getattr(self, f"mean_{scale}")) / getattr(self, f"std_{scale}")
            for scale, maps in enumerate(features)
        ]


class StandardizedExtractor(FeatureExtractor):
    """A frozen feature extractor followed by a :class:`FeatureStandardizer`.

    ``forward`` maps images ``(n, 3, H, W)`` at ``working_size`` to the
    wrapped extractor's maps, standardised; :meth:`calibrate` fits the
    statistics on the training features. A fixed affine map of each map, so
    ``feature_shapes``, ``strides``, ``mean`` and ``std`` are the wrapped
    extractor's.

    Parameters
    ----------
    extractor : FeatureExtractor
        The frozen extractor; available as ``wrapped``.
    mode : {"channel", "position"}
        See :class:`FeatureStandardizer`.
    working_size : (int, int)
        The resolution images are resized to: sets the statistics' shapes.
    """

    def __init__(self, extractor, mode, working_size):
        super().__init__()
        self.wrapped = extractor
        self.mean = extractor.mean
        self.std = extractor.std
        self.strides = extractor.strides
        self.standardizer = FeatureStandardizer(extractor.feature_shapes(tuple(working_size)), mode)

    def feature_shapes(self, working_size):
        """The wrapped extractor's shapes (standardising keeps them)."""
        return self.wrapped.feature_shapes(working_size)

    def calibrate(self, features):
        """Calibrate the wrapped extractor, then fit the statistics on its training maps; returns them standardised."""
        return self.standardizer.fit(self.wrapped.calibrate(features))

    def forward(self, images):
        return self.standardizer(self.wrapped(images))


#: ``feature_normalization`` of :class:`~skflow_ad.UFlowDetector` -> :class:`FeatureStandardizer` mode (None: none).
UFLOW_FEATURE_NORMALIZATIONS = {"layer": None, "layer+channel": "channel", "layer+position": "position"}

#: ``feature_normalization`` of :class:`~skflow_ad.CSFlowDetector` -> :class:`FeatureStandardizer` mode applied
#: after :class:`ImagePyramidFeatures`' own per-channel standardisation (None: that one only).
CSFLOW_FEATURE_NORMALIZATIONS = {"channel": None, "position": "position"}


def standardized(extractor, mode, working_size):
    """``extractor`` itself when ``mode`` is None, else a :class:`StandardizedExtractor` of that mode for ``working_size``."""
    return extractor if mode is None else StandardizedExtractor(extractor, mode, working_size)


def build_uflow_extractor(backbone, pretrained, feature_normalization="layer", working_size=None):
    """The frozen U-Flow extractor for ``backbone`` (a name or an ``nn.Module``).

    ``feature_normalization`` is a key of :data:`UFLOW_FEATURE_NORMALIZATIONS`;
    beyond ``"layer"`` the extractor is wrapped in a
    :class:`StandardizedExtractor` for ``working_size`` ``(H, W)``.
    """
    if isinstance(backbone, nn.Module):
        extractor = UserBackbone(backbone)
    elif backbone == "mcait":
        extractor = MultiScaleCaiT(pretrained)
    else:
        extractor = TimmFeaturePyramid(backbone, pretrained)
    return standardized(extractor, UFLOW_FEATURE_NORMALIZATIONS[feature_normalization], working_size)


def default_uflow_image_size(backbone):
    """The paper's working resolution: 448 for ``"mcait"``, 256 otherwise."""
    return 448 if isinstance(backbone, str) and backbone == "mcait" else 256


def check_timm_name(backbone):
    """Raise ``ValueError`` when ``backbone`` is not a timm model name."""
    import timm

    if backbone != "mcait" and not timm.is_model(backbone):
        raise ValueError(
            f"backbone {backbone!r} is not 'mcait' nor a timm model name "
            f"(see timm.list_models()); e.g. 'resnet18' or 'wide_resnet50_2'."
        )
