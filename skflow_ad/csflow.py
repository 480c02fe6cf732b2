"""CS-Flow (Rudolph, Wehrbein, Rosenhahn, Wandt; arXiv 2110.02855) as a scikit-learn outlier detector."""

from __future__ import annotations

import copy
import numbers

import torch
from sklearn.utils._param_validation import Interval, StrOptions

from ._validation import check_image_size
from .base import BaseFlowDetector
from .features import (
    CSFLOW_ARCHITECTURE,
    CSFLOW_BACKBONE,
    CSFLOW_FEATURE_NORMALIZATIONS,
    CSFLOW_WEIGHTS_TAGS,
    EfficientNetStage,
    ImagePyramidFeatures,
    freeze,
    standardized,
)
from .nn.csflow import CrossScaleFlow, CSFlowHead, csflow_anomaly_score, csflow_nll
from .trainer import TrainingRecipe, fused_adam

#: The quarter-size image must cover at least one stride-32 cell of EfficientNet-B5.
MIN_IMAGE_SIZE = 128

#: The paper's working resolution, what ``image_size=None`` means.
PAPER_IMAGE_SIZE = 768

#: ``backbone`` names: the paper's, then timm's ``tf_efficientnet_b5`` with each weight tag.
BACKBONE_NAMES = ("efficientnet_b5", *(f"{CSFLOW_ARCHITECTURE}.{tag}" for tag in CSFLOW_WEIGHTS_TAGS))


def _timm_backbone_name(backbone):
    """The timm name (architecture and weights tag) of a ``backbone`` string of :class:`CSFlowDetector`."""
    return CSFLOW_BACKBONE if backbone == "efficientnet_b5" else backbone


class CSFlowDetector(BaseFlowDetector):
    """Fully convolutional cross-scale flow on EfficientNet-B5 features.

    The image is seen at full, half and quarter size (nearest-neighbour
    resizing, as in the authors' code); a frozen EfficientNet-B5
    (output of stage 6, 304 channels at stride 32) gives one map per size, and
    cross-scale coupling blocks transform the three maps jointly into standard
    normal latents. The image anomaly score is the mean of ``z**2 / 2`` over
    all latent entries. ``predict_mask`` applies U-Flow's a-contrario test to
    CS-Flow's latents (an extension of the paper: the latents are standard
    normal under the model, so the same test holds) or thresholds the map.
    Beyond the paper, the backbone features are standardised per channel
    (or per channel and position: ``feature_normalization``) with statistics
    of the training features (a fixed affine map), which keeps training
    stable whatever the backbone weights.

    Parameters
    ----------
    backbone : str or torch.nn.Module, default="efficientnet_b5"
        ``"efficientnet_b5"``: the paper's trunk (EfficientNet-B5 up to the end
        of stage 6) with the weights the authors used, timm
        ``"tf_efficientnet_b5.aa_in1k"`` (``skflow_ad.features.CSFLOW_BACKBONE``):
        the TensorFlow checkpoint trained on ImageNet with AutoAugment, which
        ``efficientnet_pytorch``'s ``EfficientNet.from_pretrained('efficientnet-b5')``
        (the authors' call) also holds. timm's default tag for
        ``tf_efficientnet_b5`` is a different checkpoint (Noisy Student).
        ``"tf_efficientnet_b5.<tag>"`` picks one of timm's weight tags
        ``aa_in1k``, ``ns_jft_in1k``, ``ra_in1k``, ``ap_in1k``, ``in1k``
        (``skflow_ad.csflow.BACKBONE_NAMES``); images are then normalised with
        that tag's mean and std. (timm's ``efficientnet_b5``, without ``tf_``,
        is another model.) Or a module mapping images ``(n, 3, H, W)`` to one
        feature map ``(n, C, h, w)``, applied at the three image sizes and
        frozen.
    pretrained : bool or path, default=True
        Download the weights of the backbone's tag (through timm), keep random
        weights (``False``), or load a local state-dict file of
        ``tf_efficientnet_b5`` (a folder is searched for
        ``tf_efficientnet_b5.<tag>.pth``); the normalisation is the tag's
        either way.
    backbone_batchnorm : {"frozen", "recalibrate"}, default="frozen"
        As in :class:`UFlowDetector`: ``"recalibrate"`` re-estimates
        EfficientNet-B5's BatchNorm statistics on the training images (at the
        three image sizes) before the features are cached.
    image_size : int, (int, int) or None, default=768
        Working resolution (the paper's 768 px; None means 768); at least 128
        with EfficientNet-B5.
    feature_normalization : {"channel", "position"}, default="channel"
        ``"channel"``: each scale's backbone map is standardised per channel
        with the mean and std of the training features. ``"position"`` then
        standardises each channel at each position of each scale as
        :class:`UFlowDetector`'s ``"layer+position"`` does (statistics
        ``(C, h_s, w_s)`` fitted at fit time, stored with the model, applied
        to cached and new features alike; a fixed affine map, so the
        likelihood changes by a constant only). On KolektorSDD with random
        EfficientNet-B5 weights (one seed, ``docs/benchmarks.md``) it raised
        pixel AUROC by 0.029 and lowered image AUROC by 0.027, so the default
        stays ``"channel"``; try it for aligned images with position effects
        (vignetting, fixtures) and keep it where it wins on your data.
    n_coupling_blocks : int, default=4
        Cross-scale coupling blocks, each preceded by a fixed random channel
        permutation per scale.
    cross_conv_hidden_channels : int, default=1024
        Hidden channels of the cross-convolution subnets.
    clamp : float, default=3.0
        Soft clamp of the log-scales, ``clamp * 2/pi * atan(s / clamp)``.
    kernel_sizes : tuple of int or None, default=None
        Kernel size per block; None is 3 for every block but the last, 5.
    map_mode : {"all", "max"}, default="all"
        ``anomaly_map``: product over scales of the per-scale mean over
        channels of ``z**2`` (``"all"``, as anomalib) or the finest scale only
        (``"max"``, as the authors' code localises). Fixed at fit time, since
        ``pixel_threshold_`` is learned on these maps.
    contamination : "auto" or float in (0, 0.5], default="auto"
        As in :class:`UFlowDetector`.
    learning_rate : float, default=2e-4
        Adam (eps 1e-4) as in the paper; gradient norms are clipped at 1.
    weight_decay : float, default=1e-5
        Adam's L2 penalty.
    batch_size : int, default=16
        Training and prediction batch size.
    max_epochs : int, default=240
        Upper bound on training epochs (early stopping usually ends sooner).
    validation_fraction, n_iter_no_change, tol
        Early stopping, as in :class:`UFlowDetector` (``tol`` in NLL per dimension).
    mask_method, nfa_window_size, nfa_probability_threshold, nfa_high_precision, nfa_log_epsilon, min_region_area, pixel_quantile
        Segmentation, as in :class:`UFlowDetector`. The NFA tests are U-Flow's,
        applied to CS-Flow's latents (an extension of the paper: they are
        standard normal under the model as well).
    feature_cache_dtype, compile_inference
        Feature-cache precision and compiled prediction, as in :class:`UFlowDetector`
        (compilation does not pay for EfficientNet-B5 on a CPU: see the user guide).
    device : str, default="auto"
        ``"auto"`` (cuda, then mps, then cpu) or a torch device string.
    random_state : int, RandomState or None, default=None
        Seeds initialisation, permutations, the validation split and shuffling.
    verbose : bool, default=False
        Show a progress bar over epochs.

    Attributes
    ----------
    offset_, pixel_threshold_, device_, loss_curve_, validation_loss_curve_, best_loss_, n_iter_,
    image_size_, n_channels_, feature_shapes_, feature_cache_dtype_, n_features_in_
        As in :class:`UFlowDetector`.
    """

    # Model files and pickles from before feature_normalization existed: their features were standardised per channel.
    _legacy_parameter_values: dict = {**BaseFlowDetector._legacy_parameter_values, "feature_normalization": "channel"}

    _parameter_constraints: dict = {
        **BaseFlowDetector._parameter_constraints,
        "backbone": [StrOptions(set(BACKBONE_NAMES)), torch.nn.Module],
        "n_coupling_blocks": [Interval(numbers.Integral, 1, None, closed="left")],
        "cross_conv_hidden_channels": [Interval(numbers.Integral, 1, None, closed="left")],
        "clamp": [Interval(numbers.Real, 0, None, closed="neither")],
        "kernel_sizes": [None, tuple, list],
        "map_mode": [StrOptions({"all", "max"})],
        "feature_normalization": [StrOptions(set(CSFLOW_FEATURE_NORMALIZATIONS))],
        "weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
    }

    def __init__(
        self,
        backbone="efficientnet_b5",
        *,
        pretrained=True,
        backbone_batchnorm="frozen",
        image_size=768,
        feature_normalization="channel",
        n_coupling_blocks=4,
        cross_conv_hidden_channels=1024,
        clamp=3.0,
        kernel_sizes=None,
        map_mode="all",
        contamination="auto",
        learning_rate=2e-4,
        weight_decay=1e-5,
        batch_size=16,
        max_epochs=240,
        validation_fraction=0.1,
        n_iter_no_change=10,
        tol=1e-4,
        mask_method="tree_nfa",
        nfa_window_size=5,
        nfa_probability_threshold=0.9,
        nfa_high_precision=False,
        nfa_log_epsilon=0.0,
        min_region_area=1,
        pixel_quantile=0.999,
        feature_cache_dtype="auto",
        compile_inference=False,
        device="auto",
        random_state=None,
        verbose=False,
    ):
        self.backbone = backbone
        self.pretrained = pretrained
        self.backbone_batchnorm = backbone_batchnorm
        self.image_size = image_size
        self.feature_normalization = feature_normalization
        self.n_coupling_blocks = n_coupling_blocks
        self.cross_conv_hidden_channels = cross_conv_hidden_channels
        self.clamp = clamp
        self.kernel_sizes = kernel_sizes
        self.map_mode = map_mode
        self.contamination = contamination
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.mask_method = mask_method
        self.nfa_window_size = nfa_window_size
        self.nfa_probability_threshold = nfa_probability_threshold
        self.nfa_high_precision = nfa_high_precision
        self.nfa_log_epsilon = nfa_log_epsilon
        self.min_region_area = min_region_area
        self.pixel_quantile = pixel_quantile
        self.feature_cache_dtype = feature_cache_dtype
        self.compile_inference = compile_inference
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # Hooks of BaseFlowDetector ------------------------------------------
    def _make_extractor(self, params, pretrained):
        backbone = params["backbone"]
        if isinstance(backbone, torch.nn.Module):
            trunk = freeze(copy.deepcopy(backbone))
        else:
            trunk = EfficientNetStage(pretrained, _timm_backbone_name(backbone))
        mode = CSFLOW_FEATURE_NORMALIZATIONS[params["feature_normalization"]]
        return standardized(ImagePyramidFeatures(trunk, n_scales=3), mode, self._resolve_working_size(params))

    def _working_size(self, params):
        size = check_image_size(PAPER_IMAGE_SIZE if params["image_size"] is None else params["image_size"])
        if isinstance(params["backbone"], str) and min(size) < MIN_IMAGE_SIZE:
            raise ValueError(
                f"CSFlowDetector needs image_size of at least {MIN_IMAGE_SIZE} px (its quarter-size "
                f"image must cover one stride-32 cell of EfficientNet-B5); got {params['image_size']!r}."
            )
        return size

    def _check_feature_shapes(self, shapes, working_size, extractor):
        if any(c < 2 for c, _, _ in shapes):
            raise ValueError(f"CS-Flow's coupling blocks need at least 2 feature channels; got shapes {shapes}.")

    def _make_flow(self, params, feature_shapes, seed):
        kernel_sizes = params["kernel_sizes"]
        return CrossScaleFlow(
            [shape[0] for shape in feature_shapes], n_scales=len(feature_shapes),
            n_coupling_blocks=params["n_coupling_blocks"], hidden_channels=params["cross_conv_hidden_channels"],
            clamp=params["clamp"], kernel_sizes=None if kernel_sizes is None else tuple(kernel_sizes), seed=seed,
        )

    def _make_head(self, params, working_size):
        # The fit-time map mode: pixel_threshold_ was learned on maps of that mode.
        return CSFlowHead(working_size, params["map_mode"])

    def _vector_flow_kwargs(self, params):
        return dict(flow_steps=params["n_coupling_blocks"], block_kwargs=dict(affine_clamping=params["clamp"]))

    def _training_recipe(self, params, feature_shapes):
        lr, weight_decay = params["learning_rate"], params["weight_decay"]
        return TrainingRecipe(
            loss=csflow_nll,  # already per latent dimension
            make_optimizer=lambda parameters: torch.optim.Adam(
                parameters, lr=lr, eps=1e-4, weight_decay=weight_decay, **fused_adam(parameters)
            ),
            clip_grad_norm=1.0,
            divergence_advice="Lower learning_rate or clamp.",
        )

    def _vector_anomaly_scores(self, latents, log_jac_det):
        return csflow_anomaly_score(latents)
