"""Pieces shared by the FrEIA flows: seeded construction, the coupling block and its subnets."""

from __future__ import annotations

import contextlib
import warnings

import FrEIA.modules as Fm
import numpy as np
import torch
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


class AllInOneBlock(Fm.AllInOneBlock):
    """FrEIA's ``AllInOneBlock`` applying a hard channel permutation by indexing.

    FrEIA applies the permutation after each coupling as a 1x1 convolution
    (or a linear map) with a 0/1 matrix: ``C**2`` multiply-adds per pixel, as
    many as a 1x1 coupling subnet's. For a hard permutation
    (``permute_soft=False``, no learned Householder reflections) gathering the
    channels gives the same output with no arithmetic. Soft permutations keep
    FrEIA's matrix product. Parameters and ``state_dict`` are FrEIA's.
    """

    def __init__(self, dims_in, dims_c=None, **kwargs):
        super().__init__(dims_in, dims_c=[] if dims_c is None else dims_c, **kwargs)
        if self._index_permutation():
            self.permute_function = self._gather_channels
            # Loaded weights bring their own permutation matrix: re-derive the indices.
            self.register_load_state_dict_post_hook(AllInOneBlock._reindex_after_load)

    def _index_permutation(self):
        """Derive the gather indices from ``w_perm``; False when it is not a 0/1 matrix."""
        if self.w_perm is None:  # Householder permutations are rebuilt from learned vectors at each call
            return False
        matrix = self.w_perm.detach().reshape(self.in_channels, self.in_channels)
        if not bool(((matrix == 0) | (matrix == 1)).all()):
            return False
        # conv/linear with w computes out[:, i] = x[:, j] where w[i, j] = 1; w.T inverts it.
        index = matrix.argmax(1)
        self.register_buffer("_perm_index", index, persistent=False)
        self.register_buffer("_perm_inverse_index", torch.argsort(index), persistent=False)
        return True

    @staticmethod
    def _reindex_after_load(module, incompatible_keys):
        module._index_permutation()

    def _gather_channels(self, x, w):
        index = self._perm_index if w is self.w_perm else self._perm_inverse_index
        return x.index_select(1, index)


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
    """The keyword arguments of FrEIA's ``AllInOneBlock`` from our parameter names."""
    return dict(
        affine_clamping=affine_clamp,
        permute_soft=permute_soft,
        gin_block=gin_block,
        global_affine_type=global_affine_type,
        global_affine_init=global_affine_init,
        learned_householder_permutation=learned_householder_permutation,
        reverse_permutation=reverse_permutation,
    )
