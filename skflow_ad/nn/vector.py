"""A flow on feature vectors ``(n, d)``: the detectors' mode for tabular input."""

from __future__ import annotations

import math

import FrEIA.framework as Ff
import FrEIA.modules as Fm
from torch import nn

from ._blocks import AllInOneBlock, MLPSubnet, SubnetFactory, freeze_parameter_order, seeded


class VectorFlow(nn.Module):
    """A chain of ``AllInOneBlock`` s with linear-ReLU-linear subnets on ``(n, d)`` vectors."""

    def __init__(self, n_features, flow_steps=4, hidden_ratio=1.0, block_kwargs=None, seed=0):
        super().__init__()
        self.n_features = int(n_features)
        block_kwargs = dict(block_kwargs or {})
        with seeded(seed):
            nodes = [Ff.InputNode(self.n_features, name="vectors")]
            for step in range(flow_steps):
                factory = SubnetFactory(MLPSubnet, hidden_ratio=hidden_ratio)
                nodes.append(
                    Ff.Node(nodes[-1], AllInOneBlock, dict(subnet_constructor=factory, **block_kwargs), name=f"flow_{step}")
                )
            nodes.append(Ff.OutputNode(nodes[-1], name="latent"))
            self.graph = freeze_parameter_order(Ff.GraphINN(nodes), nodes)

    def forward(self, features):
        """``[x (n, d)]`` -> ``([z (n, d)], log|det J| (n,))``."""
        latent, log_jac_det = self.graph(features[0])
        return [latent], log_jac_det

    def inverse(self, latents):
        features, _ = self.graph(latents[0], rev=True, jac=False)
        return [features]


def gaussian_log_likelihood(latents, log_jac_det):
    """Exact log-density ``log p(x)`` under a standard-normal base, shape ``(n,)``."""
    z = latents[0]
    dim = z.shape[1]
    return -0.5 * z.pow(2).sum(1) - 0.5 * dim * math.log(2 * math.pi) + log_jac_det
