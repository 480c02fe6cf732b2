"""Pieces shared by the FrEIA flows: seeded construction, the coupling block and its subnets."""

from __future__ import annotations

import contextlib
import warnings

import FrEIA.modules as Fm
import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import special_ortho_group
from torch import nn


@contextlib.contextmanager
def seeded(seed):
    """Seed torch's and numpy's global generators inside the block, then restore them.

    FrEIA draws its permutations from ``np.random`` and torch initialises
    weights from its global generator; seeding both makes a build reproducible
    without disturbing the caller's random streams.
    """
    numpy_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        try:
            with warnings.catch_warnings():
                # A one-channel input gives FrEIA an empty coupling half; that is fine.
                warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
                yield
        finally:
            np.random.set_state(numpy_state)


def freeze_parameter_order(graph, nodes):
    """Register the graph's modules in build order.

    FrEIA's ``GraphINN`` orders nodes through sets, so the ``state_dict`` keys
    of two builds of the same graph can point at different modules; saved
    weights then load into the wrong blocks. Forward order is untouched.
    """
    graph.module_list = nn.ModuleList([n.module for n in nodes if getattr(n, "module", None) is not None])
    return graph


#: The ``global_affine_type`` options: the activation of the global scale and the
#: pre-activation value that makes the initial scale ``global_affine_init``.
_GLOBAL_SCALES = {
    "SIGMOID": (lambda a: 10 * torch.sigmoid(a - 2.0), lambda init: 2.0 - np.log(10.0 / init - 1.0)),
    "SOFTPLUS": (
        lambda a: 0.1 * F.softplus(a, beta=0.5, threshold=20.0),
        lambda init: 2.0 * np.log(np.exp(0.5 * 10.0 * init) - 1),
    ),
    "EXP": (torch.exp, np.log),
}
#: Channel mixing by a ``(C, C, 1, ...)`` matrix, by the rank of the non-channel dimensions.
_MIX_CHANNELS = {0: F.linear, 1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class AllInOneBlock(Fm.InvertibleModule):
    """Affine coupling, global affine scaling and a channel permutation: FrEIA 0.2's ``AllInOneBlock``.

    Computes exactly what ``FrEIA.modules.AllInOneBlock`` of the FrEIA 0.2
    release computes, with the same parameters, ``state_dict`` keys and random
    draws (so a seeded build gives the same weights), but is written on
    FrEIA's stable ``InvertibleModule`` interface instead of subclassing that
    block: FrEIA's development branch, which still calls itself 0.2, changed
    the block's internals (hard permutations stored as index vectors drawn
    from torch, the clamp ``clamp * tanh(s / clamp)``), and a subclass would
    silently change, or break, with it.

    For ``x`` of shape ``(n, C, ...)`` split along channels into ``x1``
    (``C - C // 2`` channels) and ``x2`` (``C // 2``), one forward step is::

        a   = 0.1 * subnet(concat(x1, *conditions))       # (n, 2 * (C // 2), ...)
        s   = affine_clamping * tanh(a[:, :C // 2])        # minus its mean with gin_block
        x2' = x2 * exp(s) + a[:, C // 2:]
        y   = P (g * concat(x1, x2') + offset)             # g = activation(global_scale)

    with log-determinant ``sum(s) + n_pixels * sum(log g)`` per sample. ``P``
    is a random channel permutation (``permute_soft=False``), a random
    rotation (``True``), times learned Householder reflections when
    ``learned_householder_permutation > 0``; ``reverse_permutation`` applies
    ``P^-1`` before the coupling too. A hard permutation is applied by
    gathering channels (FrEIA multiplies by the 0/1 matrix: ``C**2``
    multiply-adds per pixel for the same result); it is still stored as FrEIA
    0.2's matrix, so saved weights load in both directions.

    Parameters
    ----------
    dims_in : list of one tuple
        ``[(C, ...)]``, the input shape without the batch axis (1 to 4 dims).
    dims_c : list of tuples, default=None
        Shapes of the conditions, concatenated to ``x1`` along channels.
    subnet_constructor : callable
        ``f(c_in, c_out) -> nn.Module`` for the coupling subnet.
    affine_clamping : float, default=2.0
    gin_block : bool, default=False
        Volume-preserving coupling (GIN) without global scaling.
    global_affine_init : float, default=1.0
    global_affine_type : {"SOFTPLUS", "SIGMOID", "EXP"}, default="SOFTPLUS"
    permute_soft : bool, default=False
    learned_householder_permutation : int, default=0
    reverse_permutation : bool, default=False
    """

    def __init__(
        self,
        dims_in,
        dims_c=None,
        subnet_constructor=None,
        affine_clamping=2.0,
        gin_block=False,
        global_affine_init=1.0,
        global_affine_type="SOFTPLUS",
        permute_soft=False,
        learned_householder_permutation=0,
        reverse_permutation=False,
    ):
        dims_c = [] if dims_c is None else list(dims_c)
        super().__init__(dims_in, dims_c)
        channels = int(dims_in[0][0])
        self.input_rank = len(dims_in[0]) - 1
        if self.input_rank not in _MIX_CHANNELS:
            raise ValueError(f"AllInOneBlock takes 1-d to 4-d inputs (without the batch axis); got {dims_in[0]}.")
        if dims_c and tuple(dims_c[0][1:]) != tuple(dims_in[0][1:]):
            raise ValueError(f"the conditions {dims_c} and the input {dims_in} differ in their non-channel dims.")
        if global_affine_type not in _GLOBAL_SCALES:
            raise ValueError(f"global_affine_type must be one of {sorted(_GLOBAL_SCALES)}; got {global_affine_type!r}.")
        if subnet_constructor is None:
            raise ValueError("AllInOneBlock needs a subnet_constructor: a callable (c_in, c_out) -> nn.Module.")
        if permute_soft and channels > 512:
            warnings.warn(
                f"a soft permutation of {channels} channels is slow to draw; consider permute_soft=False.",
                stacklevel=2,
            )
        self.channels = channels
        self.splits = [channels - channels // 2, channels // 2]
        self.sum_dims = tuple(range(1, 2 + self.input_rank))
        self.clamp = affine_clamping
        self.gin_block = gin_block
        self.reverse_permutation = reverse_permutation
        self.n_householder = learned_householder_permutation
        self.global_affine_type = global_affine_type

        broadcast = [1] * self.input_rank
        initial_scale = float(_GLOBAL_SCALES[global_affine_type][1](global_affine_init))
        self.global_scale = nn.Parameter(torch.ones(1, channels, *broadcast) * initial_scale)
        self.global_offset = nn.Parameter(torch.zeros(1, channels, *broadcast))

        # The same draws, in the same order, as FrEIA 0.2: numpy for the
        # permutation, then torch for the reflections and the subnet.
        if permute_soft:
            matrix = special_ortho_group.rvs(channels)
        else:
            matrix = np.zeros((channels, channels))
            matrix[np.arange(channels), np.random.permutation(channels)] = 1.0
        if self.n_householder:
            self.vk_householder = nn.Parameter(0.2 * torch.randn(self.n_householder, channels))
            self.w_0 = nn.Parameter(torch.from_numpy(matrix).float(), requires_grad=False)
            self.w_perm = self.w_perm_inv = None
        else:
            self.w_perm = nn.Parameter(torch.from_numpy(matrix).float().view(channels, channels, *broadcast),
                                       requires_grad=False)
            self.w_perm_inv = nn.Parameter(torch.from_numpy(matrix.T).float().view(channels, channels, *broadcast),
                                           requires_grad=False)
        self.subnet = subnet_constructor(self.splits[0] + sum(dims[0] for dims in dims_c), 2 * self.splits[1])
        self.register_buffer("_perm_index", None, persistent=False)
        self.register_buffer("_perm_inverse_index", None, persistent=False)
        self._index_permutation()
        # Loaded weights bring their own permutation matrix: re-derive the indices.
        self.register_load_state_dict_post_hook(AllInOneBlock._reindex_after_load)

    def _index_permutation(self):
        """Gather indices from a 0/1 ``w_perm`` (else None: the matrix is applied as it is)."""
        self._perm_index = self._perm_inverse_index = None
        if self.w_perm is None:  # Householder permutations are rebuilt from learned vectors at each call
            return
        matrix = self.w_perm.detach().reshape(self.channels, self.channels)
        if not bool(((matrix == 0) | (matrix == 1)).all()) or not bool((matrix.sum(1) == 1).all()):
            return
        # Mixing with w computes out[:, i] = x[:, j] where w[i, j] = 1; w.T inverts it.
        index = matrix.argmax(1)
        self.register_buffer("_perm_index", index, persistent=False)
        self.register_buffer("_perm_inverse_index", torch.argsort(index), persistent=False)

    @staticmethod
    def _reindex_after_load(module, incompatible_keys):
        module._index_permutation()

    def _householder_matrix(self):
        """``w_0`` times the learned reflections, shaped ``(C, C, 1, ...)``."""
        matrix = self.w_0
        identity = torch.eye(self.channels, device=matrix.device)
        for vk in self.vk_householder:
            matrix = torch.mm(matrix, identity - 2 * torch.ger(vk, vk) / torch.dot(vk, vk))
        return matrix.reshape(*matrix.shape, *([1] * self.input_rank))

    def _permute_channels(self, x, matrices, inverse):
        """``P x`` (or ``P^-1 x``); ``matrices`` is ``(w_perm, w_perm_inv)`` of this call."""
        if self._perm_index is not None:
            return x.index_select(1, self._perm_inverse_index if inverse else self._perm_index)
        return _MIX_CHANNELS[self.input_rank](x, matrices[1] if inverse else matrices[0])

    def _coupling(self, x2, a, rev):
        a = a * 0.1  # the subnet's outputs are scaled down for a stable start
        n_scaled = x2.shape[1]
        log_scale = self.clamp * torch.tanh(a[:, :n_scaled])
        if self.gin_block:
            log_scale = log_scale - torch.mean(log_scale, dim=self.sum_dims, keepdim=True)
        if rev:
            return (x2 - a[:, n_scaled:]) * torch.exp(-log_scale), -torch.sum(log_scale, dim=self.sum_dims)
        return x2 * torch.exp(log_scale) + a[:, n_scaled:], torch.sum(log_scale, dim=self.sum_dims)

    def forward(self, x, c=None, rev=False, jac=True):
        """``((y,), log_jac_det)`` of ``x = [tensor (n, C, ...)]``; ``rev=True`` inverts (log-det negated)."""
        c = [] if c is None else c
        if self.n_householder:
            w_perm = self._householder_matrix()
            w_perm_inv = w_perm.transpose(0, 1).contiguous() if rev or self.reverse_permutation else None
            matrices = (w_perm, w_perm_inv)
        else:
            matrices = (self.w_perm, self.w_perm_inv)
        if self.gin_block:
            scale, global_log_jac = 1.0, 0.0
        else:
            scale = _GLOBAL_SCALES[self.global_affine_type][0](self.global_scale)
            global_log_jac = torch.sum(torch.log(scale))

        x = x[0]
        if rev:
            x = (self._permute_channels(x, matrices, inverse=True) - self.global_offset) / scale
        elif self.reverse_permutation:
            x = self._permute_channels(x, matrices, inverse=True)
        x1, x2 = torch.split(x, self.splits, dim=1)
        a = self.subnet(torch.cat([x1, *c], 1) if c else x1)
        x2, log_jac_det = self._coupling(x2, a, rev)
        y = torch.cat((x1, x2), 1)
        if not rev:
            y = self._permute_channels(y * scale + self.global_offset, matrices, inverse=False)
        elif self.reverse_permutation:
            y = self._permute_channels(y, matrices, inverse=False)
        n_pixels = y[0, :1].numel()
        log_jac_det = log_jac_det + (-1) ** rev * n_pixels * global_log_jac
        return (y,), log_jac_det

    def output_dims(self, input_dims):
        return input_dims


class ConvSubnet(nn.Sequential):
    """conv(k) - ReLU - conv(k): U-Flow's coupling subnet, ``(n, c_in, h, w) -> (n, c_out, h, w)``."""

    def __init__(self, in_channels, out_channels, kernel_size, hidden_ratio):
        hidden = max(1, int(round(hidden_ratio * in_channels)))
        padding = kernel_size // 2
        super().__init__(
            nn.Conv2d(in_channels, hidden, kernel_size, padding=padding),
            nn.ReLU(),
            nn.Conv2d(hidden, out_channels, kernel_size, padding=padding),
        )


class MLPSubnet(nn.Sequential):
    """linear - ReLU - linear: the coupling subnet of the flow on feature vectors."""

    def __init__(self, in_features, out_features, hidden_ratio, min_hidden=16):
        hidden = max(min_hidden, int(round(hidden_ratio * in_features)))
        super().__init__(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_features)
        )


class SubnetFactory:
    """Picklable ``(c_in, c_out) -> nn.Module`` callable for FrEIA's ``subnet_constructor``."""

    def __init__(self, subnet_class, **kwargs):
        self.subnet_class = subnet_class
        self.kwargs = kwargs

    def __call__(self, in_channels, out_channels):
        return self.subnet_class(in_channels, out_channels, **self.kwargs)


def all_in_one_kwargs(
    affine_clamp,
    permute_soft,
    gin_block,
    global_affine_type,
    global_affine_init,
    learned_householder_permutation,
    reverse_permutation,
):
    """The keyword arguments of :class:`AllInOneBlock` (FrEIA's names) from our parameter names."""
    return dict(
        affine_clamping=affine_clamp,
        permute_soft=permute_soft,
        gin_block=gin_block,
        global_affine_type=global_affine_type,
        global_affine_init=global_affine_init,
        learned_householder_permutation=learned_householder_permutation,
        reverse_permutation=reverse_permutation,
    )
