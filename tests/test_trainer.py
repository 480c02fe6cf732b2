"""FlowTrainer and TrainingRecipe: early stopping, best weights, divergence, schedules."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from skflow_ad.trainer import FlowTrainer, TrainingRecipe, seed_from_random_state


class ShiftFlow(nn.Module):
    """``z = x - shift``, log-det 0: its NLL is minimal at the data mean."""

    def __init__(self, dim=3):
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(dim))

    def forward(self, features):
        return [features[0] - self.shift], features[0].new_zeros(features[0].shape[0])


def nll(latents, log_jac_det):
    return 0.5 * latents[0].pow(2).sum(1) - log_jac_det


def sgd(lr):
    return lambda parameters: torch.optim.SGD(parameters, lr=lr)


def features(n=40, mean=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, generator=g) * 0.1 + mean]


def trainer(recipe=None, **options):
    options = {"batch_size": 8, "max_epochs": 20, "validation_fraction": 0.25, "n_iter_no_change": 3, "tol": 0.0,
               "seed": 0, **options}
    return FlowTrainer(recipe or TrainingRecipe(loss=nll, make_optimizer=sgd(0.1)), **options)


def test_training_moves_the_flow_to_the_data_and_records_curves():
    flow = ShiftFlow()
    result = trainer().fit(flow, features())
    np.testing.assert_allclose(flow.shift.detach().numpy(), 2.0, atol=0.05)
    assert len(result.loss_curve) == len(result.validation_loss_curve) == result.n_iter
    assert result.loss_curve[-1] < result.loss_curve[0]
    assert result.best_loss == min(result.validation_loss_curve)
    assert not flow.training  # left in eval mode


def test_split_holds_out_the_validation_fraction_and_is_seeded():
    train, val = trainer(validation_fraction=0.25).split(40)
    assert len(val) == 10 and len(train) == 30
    assert set(train.tolist()).isdisjoint(val.tolist())
    again, _ = trainer(validation_fraction=0.25).split(40)
    torch.testing.assert_close(train, again)
    train, val = trainer(validation_fraction=0.01).split(40)  # rounds to no validation row
    assert len(val) == 0 and len(train) == 40


def test_early_stopping_restores_the_best_epochs_weights():
    # lr 1.9 overshoots: the loss oscillates around the optimum and stops improving.
    history = []

    class Recording(ShiftFlow):
        def forward(self, features):
            if not self.training:
                history.append(self.shift.detach().clone())
            return super().forward(features)

    flow = Recording()
    # 8 validation rows: one validation batch, so one recorded state per epoch
    result = trainer(TrainingRecipe(loss=nll, make_optimizer=sgd(1.9)), max_epochs=50, n_iter_no_change=2,
                     validation_fraction=0.2).fit(flow, features())
    assert result.stopped_early and result.n_iter < 50
    best_epoch = int(np.argmin(result.validation_loss_curve))
    torch.testing.assert_close(flow.shift.detach(), history[best_epoch])
    # stops n_iter_no_change + 1 epochs after the last improvement
    assert result.n_iter == best_epoch + 1 + 3


def test_without_validation_the_training_loss_is_monitored():
    result = trainer(validation_fraction=0.0, max_epochs=4).fit(ShiftFlow(), features())
    assert result.validation_loss_curve == []
    assert result.best_loss == min(result.loss_curve)


def test_scheduler_is_stepped_once_per_epoch():
    lrs = []

    def make_scheduler(optimizer, max_epochs):
        scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.5, total_iters=max_epochs)
        original = scheduler.step

        def step():
            original()
            lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step = step
        return scheduler

    recipe = TrainingRecipe(loss=nll, make_optimizer=sgd(0.1), make_scheduler=make_scheduler)
    trainer(recipe, max_epochs=4, n_iter_no_change=100).fit(ShiftFlow(), features())
    np.testing.assert_allclose(lrs, [0.1 * (1 - 0.5 * k / 4) for k in range(1, 5)])


def test_gradient_clipping_bounds_each_step():
    flow = ShiftFlow()
    recipe = TrainingRecipe(loss=nll, make_optimizer=sgd(1.0), clip_grad_norm=0.01)
    trainer(recipe, max_epochs=1, validation_fraction=0.0, batch_size=40).fit(flow, features())
    # one step of lr 1 with a gradient clipped to norm 0.01
    assert float(flow.shift.detach().norm()) == pytest.approx(0.01, rel=1e-4)


def test_report_scale_scales_curves_not_the_optimised_loss():
    plain, scaled = ShiftFlow(), ShiftFlow()
    a = trainer(max_epochs=3, n_iter_no_change=100).fit(plain, features())
    b = trainer(TrainingRecipe(loss=nll, make_optimizer=sgd(0.1), report_scale=1 / 3), max_epochs=3,
                n_iter_no_change=100).fit(scaled, features())
    np.testing.assert_allclose(b.loss_curve, np.array(a.loss_curve) / 3)
    torch.testing.assert_close(plain.shift, scaled.shift)


def test_a_diverging_batch_loss_raises_with_the_recipes_advice():
    recipe = TrainingRecipe(loss=nll, make_optimizer=sgd(1e30), divergence_advice="Lower learning_rate or clamp.")
    with pytest.raises(FloatingPointError, match=r"training diverged: the training loss is (inf|nan) at epoch \d+\. "
                                                 r"Lower learning_rate or clamp\."):
        trainer(recipe, max_epochs=10).fit(ShiftFlow(), features(mean=1e10))


def test_a_non_finite_validation_loss_raises():
    class InfiniteInEval(ShiftFlow):
        def forward(self, features):
            latents, log_det = super().forward(features)
            return latents, log_det if self.training else log_det - math.inf

    recipe = TrainingRecipe(loss=nll, make_optimizer=sgd(0.1), divergence_advice="Lower learning_rate.")
    with pytest.raises(FloatingPointError, match="the validation loss is inf at epoch 1. Lower learning_rate."):
        trainer(recipe).fit(InfiniteInEval(), features())


def test_seed_from_random_state():
    assert seed_from_random_state(3) == seed_from_random_state(3)
    assert seed_from_random_state(np.random.RandomState(0)) == seed_from_random_state(0)
    assert 0 <= seed_from_random_state(None) < 2**31
