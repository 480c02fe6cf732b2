"""skflow_ad.nn._blocks: our AllInOneBlock computes FrEIA 0.2's, whatever FrEIA is installed."""

import importlib.util

import FrEIA.modules as Fm
import pytest
import torch
from torch import nn

from skflow_ad.nn import _blocks
from skflow_ad.nn._blocks import AllInOneBlock, ConvSubnet, MLPSubnet, SubnetFactory, seeded

OPTIONS = [
    {},
    {"reverse_permutation": True},
    {"permute_soft": True},
    {"learned_householder_permutation": 2},
    {"gin_block": True, "global_affine_type": "SIGMOID"},
    {"global_affine_type": "EXP", "global_affine_init": 0.7, "affine_clamping": 1.5},
]
SHAPES = [((6, 5, 5), "conv"), ((7,), "mlp")]


def _factory(subnet):
    if subnet == "conv":
        return SubnetFactory(ConvSubnet, kernel_size=3, hidden_ratio=1.0)
    return SubnetFactory(MLPSubnet, hidden_ratio=1.0)


def _build(block_type, shape, subnet, options, seed=0):
    with seeded(seed):
        return block_type([shape], subnet_constructor=_factory(subnet), **options)


def _run(block, x):
    """Forward and inverse outputs, log-determinants, and the gradient of a flow loss."""
    (y,), log_jac_det = block([x])
    (x_back,), log_jac_det_back = block([y], rev=True)
    (grad,) = torch.autograd.grad(y.pow(2).sum() - log_jac_det.sum(), x)
    return y, log_jac_det, x_back, log_jac_det_back, grad


def _assert_same_block(ours, reference, shape):
    assert list(ours.state_dict()) == list(reference.state_dict())
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=0, atol=0, msg=key)
    x = torch.randn(4, *shape, requires_grad=True)
    for got, expected in zip(_run(ours, x), _run(reference, x)):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def _installed_freia_is_the_release():
    """FrEIA 0.2 stores a hard permutation as a (C, C) matrix; its development branch as a (C,) index."""
    block = Fm.AllInOneBlock([(4,)], subnet_constructor=_factory("mlp"))
    return block.w_perm is not None and block.w_perm.dim() == 2


@pytest.mark.skipif(not _installed_freia_is_the_release(), reason="the installed FrEIA is not the 0.2 release")
@pytest.mark.parametrize("shape, subnet", SHAPES)
@pytest.mark.parametrize("options", OPTIONS)
def test_equals_freia_0_2s_block_bit_for_bit(shape, subnet, options):
    # The same seeded build gives the same weights (state_dict, bit for bit) and the same outputs,
    # inverses and gradients as FrEIA 0.2's own AllInOneBlock.
    ours = _build(AllInOneBlock, shape, subnet, options)
    reference = _build(Fm.AllInOneBlock, shape, subnet, options)
    _assert_same_block(ours, reference, shape)
    hard = not options.get("permute_soft") and not options.get("learned_householder_permutation")
    assert (ours._perm_index is not None) == hard  # hard permutations gather, the others mix


class DevelopmentBranchBlock(Fm.AllInOneBlock):
    """A stand-in for FrEIA's development branch (still "0.2"), on top of the installed release.

    What changed there: a hard permutation is a ``(C,)`` index parameter drawn
    with ``torch.randperm`` and applied as ``x[:, index]``, and the coupling
    clamps ``clamp * tanh(s / clamp)`` instead of ``clamp * tanh(s)``.
    """

    def __init__(self, dims_in, dims_c=[], **kwargs):  # noqa: B006 (FrEIA's signature)
        super().__init__(dims_in, dims_c, **kwargs)
        if not kwargs.get("permute_soft") and not kwargs.get("learned_householder_permutation"):
            index = torch.randperm(self.in_channels)
            self.w_perm = nn.Parameter(index, requires_grad=False)
            self.w_perm_inv = nn.Parameter(torch.argsort(index), requires_grad=False)
            self.permute_function = lambda x, p: x[:, p]

    def _affine(self, x, a, rev=False):
        a = a * 0.1
        ch = x.shape[1]
        sub_jac = self.clamp * torch.tanh(a[:, :ch] / self.clamp)
        if not rev:
            return x * torch.exp(sub_jac) + a[:, ch:], torch.sum(sub_jac, dim=self.sum_dims)
        return (x - a[:, ch:]) * torch.exp(-sub_jac), -torch.sum(sub_jac, dim=self.sum_dims)


def _blocks_module_built_against(monkeypatch, freia_block):
    """A fresh copy of skflow_ad.nn._blocks imported while FrEIA's AllInOneBlock is ``freia_block``."""
    monkeypatch.setattr(Fm, "AllInOneBlock", freia_block)
    spec = importlib.util.spec_from_file_location("_blocks_against_other_freia", _blocks.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("shape, subnet", SHAPES)
@pytest.mark.parametrize("options", [{}, {"reverse_permutation": True}, {"permute_soft": True}])
def test_a_changed_freia_allinoneblock_changes_nothing(monkeypatch, shape, subnet, options):
    # The stand-in does change FrEIA's block: a block subclassing it would change (or crash) with it.
    stand_in = _build(DevelopmentBranchBlock, shape, subnet, options)
    assert any(key.startswith("w_perm") for key in stand_in.state_dict())
    other = _blocks_module_built_against(monkeypatch, DevelopmentBranchBlock)
    _assert_same_block(_build(other.AllInOneBlock, shape, subnet, options),
                       _build(AllInOneBlock, shape, subnet, options), shape)


def test_loaded_weights_rederive_the_gather_indices():
    source = _build(AllInOneBlock, (6, 5, 5), "conv", {}, seed=1)
    target = _build(AllInOneBlock, (6, 5, 5), "conv", {}, seed=2)
    assert not torch.equal(source._perm_index, target._perm_index)
    target.load_state_dict(source.state_dict())
    torch.testing.assert_close(target._perm_index, source._perm_index, rtol=0, atol=0)
    x = torch.randn(2, 6, 5, 5)
    torch.testing.assert_close(target([x])[0][0], source([x])[0][0], rtol=0, atol=0)
    # A matrix that is not a permutation (e.g. edited weights) is applied as a matrix, not gathered.
    state = source.state_dict()
    state["w_perm"] = state["w_perm"] * 0.5
    target.load_state_dict(state)
    assert target._perm_index is None
    expected = torch.nn.functional.conv2d(x * 0 + 1, state["w_perm"])
    assert torch.allclose(target._permute_channels(x * 0 + 1, (state["w_perm"], None), inverse=False), expected)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"global_affine_type": "TANH"}, ValueError, "global_affine_type must be one of"),
        ({"subnet_constructor": None}, ValueError, "needs a subnet_constructor"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        AllInOneBlock([(4,)], **{"subnet_constructor": _factory("mlp"), **kwargs})
    with pytest.raises(ValueError, match="1-d to 4-d inputs"):
        AllInOneBlock([(2, 2, 2, 2, 2)], subnet_constructor=_factory("mlp"))
