"""U-Flow (Tailanian, Pardo, Musé; arXiv 2211.12353) as a scikit-learn outlier detector."""

from __future__ import annotations

import copy
import math
import numbers

import torch
from sklearn.utils._param_validation import Interval, StrOptions

from .base import BaseFlowDetector
from .features import (
    UFLOW_FEATURE_NORMALIZATIONS,
    build_uflow_extractor,
    check_timm_name,
    default_uflow_image_size,
)
from .nn._blocks import all_in_one_kwargs
from .nn.uflow import UFlowHead, UFlowNet, check_scale_weights, check_uflow_shapes, uflow_nll
from .trainer import TrainingRecipe, fused_adam


class UFlowDetector(BaseFlowDetector):
    """U-shaped normalizing flow on frozen multi-scale features, with NFA segmentation.

    Features of a frozen backbone at several scales enter a U-shaped flow of
    FrEIA ``AllInOneBlock`` s, trained by maximum likelihood on normal images
    only, towards a Gaussian base of standard deviation ``base_std``. The
    anomaly map is one minus the mean over scales of the per-pixel likelihood
    ``exp(-0.5 * mean_c u**2)`` of the flow's outputs ``u``; the image anomaly
    score is the map's maximum. ``predict_mask`` segments anomalies without
    labels with the paper's a-contrario test (a pixel is anomalous when its
    number of false alarms is below one).

    Parameters
    ----------
    backbone : str or torch.nn.Module, default="mcait"
        ``"mcait"`` (the paper's CaiT-M48 at 448 px and CaiT-S24 at 224 px),
        ``"resnet18"``, ``"wide_resnet50_2"`` (layer1-layer3, each map
        layer-normalised), any timm model offering ``features_only``, or a
        module returning a list of feature maps ``(n, C_s, h_s, w_s)`` whose
        sizes halve from one scale to the next.
    pretrained : bool or path, default=True
        ImageNet weights (downloaded by timm), random weights (``False``), or a
        local state-dict file (for ``"mcait"``, a folder with
        ``cait_m48_448.pth`` and ``cait_s24_224.pth``).
    backbone_batchnorm : {"frozen", "recalibrate"}, default="frozen"
        The BatchNorm statistics of the backbone. ``"frozen"``: the ones its
        weights came with (ImageNet's, or the initial zero mean and unit
        variance of random weights). ``"recalibrate"``: re-estimated on the
        training images in one pass before the features are cached (adaptive
        batch normalisation; weights unchanged), stored in ``extractor_`` and
        so in model files, pickles and exported graphs. It pays where the
        stored statistics do not describe the data: random weights
        (``pretrained=False`` or a random state dict), or a backbone trained
        on another domain. On KolektorSDD with random resnet18 weights it
        raised U-Flow's pixel AUROC above anomalib's (``docs/benchmarks.md``).
        A backbone without BatchNorm layers (``"mcait"``) accepts only
        ``"frozen"``.
    image_size : int or (int, int), default=None
        Working resolution images are resized to; None means 448 for
        ``"mcait"`` and 256 otherwise. Must be divisible by the backbone's
        coarsest stride (16 for ResNets).
    feature_normalization : {"layer+position", "layer+channel", "layer"}, default="layer+position"
        How the backbone's maps are normalised before the flow. ``"layer"``:
        the backbone's own normalisation only (for timm CNNs a parameter-free
        layer norm of each map over ``(C, h, w)``, for ``"mcait"`` CaiT's
        final norm, none for a module). ``"layer+channel"`` then standardises
        each channel, and ``"layer+position"`` each channel at each position,
        with the mean and std of the training features (fitted once per fit,
        stored in ``extractor_`` and so in model files and pickles, applied
        to the cached training features and to every new image alike). These
        are fixed affine maps: the flow's likelihood changes by a constant
        only, but what all training images share at one place (a CNN's zero
        padding at the borders, vignetting, fixtures) no longer has to be
        learned by the flow. Keep ``"layer+position"`` when the images are
        aligned (a fixed camera and part, as on an inspection line): of the
        three it gave the best pixel AUROC and AUPRO on KolektorSDD at
        208 x 80, seed 0, and the NFA masks that find most; at 320 x 128
        ``"layer"`` gave better AUROCs (``docs/benchmarks.md``): compare both
        on your data. Use ``"layer+channel"`` when objects appear
        anywhere in the frame (position statistics then describe the
        training set's layout, not the camera) or with very few training
        images (per-position statistics are estimated from one value per
        image); on KolektorSDD, seed 0, it gave the best image AUROC.
        ``"layer"`` gives the features without standardisation.
    base_std : float, default=1.0
        Standard deviation of the Gaussian base the flow's outputs ``u`` are
        trained towards, ``N(0, base_std**2)``; the flow then divides them by
        it, so the latents ``z`` that the NFA masks test are standard normal
        under the model and its log-likelihood stays exact. The anomaly map
        is the paper's ``exp(-0.5 mean_c u**2)`` on the unscaled outputs
        ``u = base_std * z``, i.e. at temperature ``base_std**-2`` in terms of
        ``z``. 1 is the textbook maximum-likelihood flow. Below 1 the flow has
        to contract the features and the map is flatter (strong anomalies no
        longer all saturate it at 1); anomalib's U-Flow, whose loss sums
        ``z**2`` over the batch but averages the log-determinant, trains as
        ``base_std = 1 / sqrt(batch_size)``. On KolektorSDD at 208 x 80 and 30
        epochs (random resnet18, three seeds; ``docs/benchmarks.md``) 0.2
        raised image AUROC by 0.095 and pixel AUROC by 0.024 over 1, on every
        seed, to anomalib's level; at 128 x 48 and 20 epochs it raised image
        AUROC by 0.098 but lowered pixel AUROC by 0.010, and on small
        synthetic images it lowered both: compare both on images with
        defects. Feature-vector input (``(n_samples, n_features)``) keeps a
        standard-normal base.
    map_scale_weights : sequence of float, default=None
        Weights of the scales in the anomaly map, one per feature scale,
        finest first (3 for the ResNets and ``"mcait"``): the map is one
        minus the weighted mean of the per-scale likelihoods. None weighs them
        equally, the paper's mean; a zero leaves a scale out of the map (the
        flow and the NFA masks still use every scale). Coarse scales see
        large defects, the finest one thin ones: for thin defects (cracks,
        scratches) weigh the finest scale up.
    map_calibration : {"none", "position"}, default="none"
        ``"position"`` subtracts from every anomaly map the mean map of the
        training images (``map_reference_``, fitted once per fit and stored
        with the model), so that each pixel is scored relative to what is
        usual at its place: what the flow models less well at some positions
        (borders, fixtures, the parts of an aligned object) no longer reads
        as anomalous. The map can then be negative; thresholds, scores and
        exports use the calibrated map. For aligned images, as
        ``feature_normalization="layer+position"``.
        On KolektorSDD at 208 x 80 (random resnet18, three seeds,
        ``docs/benchmarks.md``), ``base_std=0.2``,
        ``map_scale_weights=(1, 0.5, 0)`` and ``map_calibration="position"``
        together lead anomalib's U-Flow in image and pixel AUROC and AUPRO.
    flow_steps : int, default=4
        ``AllInOneBlock`` s per scale.
    affine_clamp : float, default=2.0
        Soft clamp of the coupling log-scales.
    affine_subnet_channels_ratio : float, default=1.0
        Hidden over input channels of the coupling subnets.
    permute_soft : bool, default=False
        Random orthogonal (True) or hard (False) channel permutations.
    gin_block, global_affine_type, global_affine_init, learned_householder_permutation, reverse_permutation
        The other ``AllInOneBlock`` options, passed through.
    contamination : "auto" or float in (0, 0.5], default="auto"
        Expected share of anomalies in the training data, setting ``offset_``
        as in IsolationForest; ``"auto"`` puts it at the lower Tukey fence of
        the training scores (Q1 - 1.5 IQR).
    learning_rate : float, default=1e-3
        Adam's learning rate, decayed linearly to 0.4 of it over ``max_epochs``.
    weight_decay : float, default=1e-5
    batch_size : int, default=32
        Training and prediction batch size.
    max_epochs : int, default=100
    validation_fraction : float, default=0.1
        Share of the training images held out to monitor the negative
        log-likelihood for early stopping (the best epoch's weights are kept);
        0 monitors the training loss instead.
    n_iter_no_change : int, default=10
        Epochs without an improvement of at least ``tol`` before stopping.
    tol : float, default=1e-4
        In NLL per latent dimension.
    mask_method : {"tree_nfa", "block_nfa", "threshold"}, default="tree_nfa"
        Default method of ``predict_mask`` and ``predict_regions``: the
        a-contrario test on the level sets of the latent energy (the current
        U-Flow paper), the a-contrario test on windows of the latents (its
        first version), or the learned ``pixel_threshold_``.
    nfa_window_size : int, default=5
        ``"block_nfa"``: window of the binomial test at the finest scale
        (halved per scale); 5 as the authors ran it.
    nfa_probability_threshold : float, default=0.9
        ``"block_nfa"``: latent values count as candidates above the
        chi-square(1) quantile of this probability; 0.9 as the authors ran it.
    nfa_high_precision : bool, default=False
        ``"block_nfa"``: compute the binomial tails exactly below the smallest
        double (slower; changes only extremely significant pixels).
    nfa_log_epsilon : float, default=0.0
        NFA methods: a pixel is anomalous when log10 NFA < this (0: fewer
        than one false alarm expected per image).
    min_region_area : int, default=1
        Masks and regions drop connected regions smaller than this many pixels.
    pixel_quantile : float, default=0.999
        The learned ``pixel_threshold_`` is this quantile of the training maps.
    feature_cache_dtype : {"auto", "float32", "float16"}, default="auto"
        Precision of the backbone features cached for training (computed once
        per fit). ``"auto"``: float32 up to 2 GiB of features, float16 beyond
        (half the memory; batches are converted back to float32 for the flow).
    compile_inference : bool, default=False
        Compile the backbone and the flow with ``torch.compile`` (frozen
        weights) for prediction. The first prediction call compiles (tens of
        seconds on a CPU, once per process and fitted model); later calls are
        faster. Scores are unchanged up to float rounding. Needs a working
        torch.compile (a C++ compiler on CPU); training is never compiled.
    device : str, default="auto"
        ``"auto"`` (cuda, then mps, then cpu) or a torch device string.
    random_state : int, RandomState or None, default=None
        Seeds initialisation, permutations, the validation split and shuffling;
        fits are reproducible on the CPU.
    verbose : bool, default=False
        Show a progress bar over epochs.

    Attributes
    ----------
    offset_ : float
        ``decision_function = score_samples - offset_``.
    pixel_threshold_ : float
        Anomaly-map threshold of ``predict_mask(method="threshold")``.
    map_reference_ : ndarray of shape (H, W), float32
        Mean anomaly map of the training images, subtracted from every map;
        only with ``map_calibration="position"``.
    device_ : str
        The device the model runs on.
    loss_curve_, validation_loss_curve_ : list of float
        Training and held-out NLL per latent dimension, per epoch.
    best_loss_ : float
        Best monitored loss.
    n_iter_ : int
        Epochs run.
    image_size_ : (int, int)
        Working resolution.
    n_channels_ : int
        Channels of the training images.
    feature_cache_dtype_ : str
        Precision the training features were cached in (``"float32"`` or ``"float16"``).
    feature_shapes_ : list of (C, h, w)
        Feature maps entering the flow, finest first.
    n_features_in_ : int
        Number of features, for feature-vector input only.

    Examples
    --------
    >>> from skflow_ad import UFlowDetector
    >>> det = UFlowDetector(backbone="resnet18", pretrained=False, image_size=64,
    ...                     max_epochs=2).fit(X_normal)  # doctest: +SKIP
    >>> det.score_samples(X_test)  # higher = more normal  # doctest: +SKIP
    """

    _legacy_parameter_values: dict = {
        **BaseFlowDetector._legacy_parameter_values, "base_std": 1.0, "map_scale_weights": None,
        "map_calibration": "none",
    }

    _parameter_constraints: dict = {
        **BaseFlowDetector._parameter_constraints,
        "backbone": [str, torch.nn.Module],
        "feature_normalization": [StrOptions(set(UFLOW_FEATURE_NORMALIZATIONS))],
        "base_std": [Interval(numbers.Real, 0, None, closed="neither")],
        "map_scale_weights": ["array-like", None],
        "map_calibration": [StrOptions({"none", "position"})],
        "flow_steps": [Interval(numbers.Integral, 1, None, closed="left")],
        "affine_clamp": [Interval(numbers.Real, 0, None, closed="neither")],
        "affine_subnet_channels_ratio": [Interval(numbers.Real, 0, None, closed="neither")],
        "permute_soft": ["boolean"],
        "gin_block": ["boolean"],
        "global_affine_type": [StrOptions({"SOFTPLUS", "SIGMOID", "EXP"})],
        "global_affine_init": [Interval(numbers.Real, 0, None, closed="neither")],
        "learned_householder_permutation": [Interval(numbers.Integral, 0, None, closed="left")],
        "reverse_permutation": ["boolean"],
        "weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
    }

    def __init__(
        self,
        backbone="mcait",
        *,
        pretrained=True,
        image_size=None,
        feature_normalization="layer+position",
        backbone_batchnorm="frozen",
        base_std=1.0,
        map_scale_weights=None,
        map_calibration="none",
        flow_steps=4,
        affine_clamp=2.0,
        affine_subnet_channels_ratio=1.0,
        permute_soft=False,
        gin_block=False,
        global_affine_type="SOFTPLUS",
        global_affine_init=1.0,
        learned_householder_permutation=0,
        reverse_permutation=False,
        contamination="auto",
        learning_rate=1e-3,
        weight_decay=1e-5,
        batch_size=32,
        max_epochs=100,
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
        self.base_std = base_std
        self.map_scale_weights = map_scale_weights
        self.map_calibration = map_calibration
        self.flow_steps = flow_steps
        self.affine_clamp = affine_clamp
        self.affine_subnet_channels_ratio = affine_subnet_channels_ratio
        self.permute_soft = permute_soft
        self.gin_block = gin_block
        self.global_affine_type = global_affine_type
        self.global_affine_init = global_affine_init
        self.learned_householder_permutation = learned_householder_permutation
        self.reverse_permutation = reverse_permutation
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
            backbone = copy.deepcopy(backbone)
        else:
            check_timm_name(backbone)
        return build_uflow_extractor(
            backbone, pretrained, params["feature_normalization"], self._resolve_working_size(params)
        )

    def _working_size(self, params):
        size = params["image_size"]
        return default_uflow_image_size(params["backbone"]) if size is None else size

    def _check_feature_shapes(self, shapes, working_size, extractor):
        strides = getattr(extractor, "strides", None)
        if strides:
            coarsest = max(strides)
            if working_size[0] % coarsest or working_size[1] % coarsest:
                nearest = tuple(max(coarsest, round(side / coarsest) * coarsest) for side in working_size)
                raise ValueError(
                    f"image_size {working_size} does not suit the backbone: U-Flow needs height and width "
                    f"divisible by its coarsest stride {coarsest}, so that each feature map is exactly half "
                    f"the size of the previous one; e.g. image_size={nearest}."
                )
        check_uflow_shapes(shapes)
        check_scale_weights(self.map_scale_weights, len(shapes))

    @staticmethod
    def _block_kwargs(params):
        return all_in_one_kwargs(
            params["affine_clamp"], params["permute_soft"], params["gin_block"],
            params["global_affine_type"], params["global_affine_init"],
            params["learned_householder_permutation"], params["reverse_permutation"],
        )

    def _make_flow(self, params, feature_shapes, seed):
        return UFlowNet(
            feature_shapes, flow_steps=params["flow_steps"],
            affine_subnet_channels_ratio=params["affine_subnet_channels_ratio"],
            block_kwargs=self._block_kwargs(params), seed=seed, base_std=params["base_std"],
        )

    def _make_head(self, params, working_size):
        return UFlowHead(working_size, base_std=params["base_std"], scale_weights=params["map_scale_weights"],
                         map_reference=getattr(self, "map_reference_", None))

    def _fit_map_calibration(self, mean_anomaly_map):
        if self._fit_params["map_calibration"] == "position":
            self.map_reference_ = mean_anomaly_map()

    def _vector_flow_kwargs(self, params):
        return dict(
            flow_steps=params["flow_steps"], hidden_ratio=params["affine_subnet_channels_ratio"],
            block_kwargs=self._block_kwargs(params),
        )

    def _training_recipe(self, params, feature_shapes):
        lr, weight_decay = params["learning_rate"], params["weight_decay"]
        return TrainingRecipe(
            loss=uflow_nll,
            make_optimizer=lambda parameters: torch.optim.Adam(
                parameters, lr=lr, weight_decay=weight_decay, **fused_adam(parameters)
            ),
            make_scheduler=lambda optimizer, max_epochs: torch.optim.lr_scheduler.LinearLR(
                optimizer, start_factor=1.0, end_factor=0.4, total_iters=max_epochs
            ),
            report_scale=1.0 / sum(math.prod(shape) for shape in feature_shapes),
            divergence_advice="Lower learning_rate or affine_clamp.",
        )
