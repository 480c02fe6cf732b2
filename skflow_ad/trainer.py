"""Device-aware training of a flow on cached features, with early stopping."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch


def resolve_device(device):
    """``"auto"`` -> cuda, then mps, then cpu; other strings are checked for availability.

    Returns
    -------
    str
        A device string torch accepts (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).
    """
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    if not device_available(device):
        kind = torch.device(device).type.upper()
        raise ValueError(f"device={device!r} was requested but {kind} is not available; use device='auto' or 'cpu'.")
    return str(torch.device(device))


def device_available(device):
    """Whether torch can run on ``device`` on this machine."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return True


def iter_batches(features, batch_size, device, indices=None, dtype=torch.float32):
    """Yield lists of per-scale batches moved to ``device`` as ``dtype``.

    Parameters
    ----------
    features : list of Tensor
        Per-scale cached features, each ``(n, ...)``, on any device and dtype.
    indices : Tensor of int, optional
        Rows to visit, in order; all rows by default.
    """
    n = features[0].shape[0]
    if indices is None:
        indices = torch.arange(n)
    for start in range(0, len(indices), batch_size):
        rows = indices[start : start + batch_size]
        yield [f[rows.to(f.device)].to(device, dtype, non_blocking=True) for f in features]


@torch.inference_mode()
def map_batches(function, features, batch_size, device, dtype=torch.float32):
    """Concatenate ``function(batch)`` over all rows of ``features``, in order, on the CPU."""
    outputs = [function(batch).detach().cpu() for batch in iter_batches(features, batch_size, device, dtype=dtype)]
    return torch.cat(outputs) if outputs else torch.empty(0)


@dataclass
class TrainingResult:
    """What a fit produced besides the trained weights (already loaded in the flow)."""

    loss_curve: list = field(default_factory=list)
    validation_loss_curve: list = field(default_factory=list)
    best_loss: float = math.inf
    n_iter: int = 0
    stopped_early: bool = False


@dataclass(frozen=True)
class TrainingRecipe:
    """How a detector's flow is trained: the loss and the optimisation, in one place.

    Attributes
    ----------
    loss : callable
        ``loss(latents, log_jac_det) -> (n,)`` per-sample negative log-likelihood;
        the training loss is its batch mean.
    make_optimizer : callable
        ``make_optimizer(parameters) -> torch.optim.Optimizer``.
    make_scheduler : callable or None
        ``make_scheduler(optimizer, max_epochs) -> scheduler``, stepped once per epoch.
    clip_grad_norm : float or None
        Gradient-norm clipping threshold.
    report_scale : float
        Factor turning ``loss`` into NLL per latent dimension, for the loss
        curves and the stopping rule (the optimised loss is unscaled).
    divergence_advice : str
        What the user should change when training diverges (names the
        detector's own parameters), ending the ``FloatingPointError`` message.
    """

    loss: Callable
    make_optimizer: Callable
    make_scheduler: Optional[Callable] = None
    clip_grad_norm: Optional[float] = None
    report_scale: float = 1.0
    divergence_advice: str = "Lower learning_rate."

    def diverged(self, what):
        """The ``FloatingPointError`` for a non-finite ``what`` (e.g. "the loss is inf at epoch 3")."""
        return FloatingPointError(f"training diverged: {what}. {self.divergence_advice}")


class FlowTrainer:
    """Maximum-likelihood training of a flow on features computed once.

    Parameters
    ----------
    recipe : TrainingRecipe
        Loss, optimiser, schedule and clipping.
    batch_size, max_epochs : int
    validation_fraction : float
        Share of the rows held out to monitor the NLL; 0 monitors the training loss.
    n_iter_no_change : int
        Epochs without an improvement of at least ``tol`` before stopping.
    tol : float
    device : str
    seed : int
        Seeds the split and the shuffling.
    verbose : bool
        Show a progress bar over epochs.
    dtype : torch.dtype
        Precision of the flow and of the batches.

    Raises
    ------
    FloatingPointError
        From :meth:`fit`, when a training batch loss or a monitored loss is
        not finite (the message ends with the recipe's ``divergence_advice``).
    """

    def __init__(
        self, recipe, *, batch_size=32, max_epochs=100, validation_fraction=0.1, n_iter_no_change=10,
        tol=1e-4, device="cpu", seed=0, verbose=False, dtype=torch.float32,
    ):
        self.recipe = recipe
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.device = device
        self.seed = seed
        self.verbose = verbose
        self.dtype = dtype

    def split(self, n_samples):
        """Train and validation row indices; no validation rows when too few samples."""
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(n_samples, generator=generator)
        n_val = int(round(self.validation_fraction * n_samples))
        if n_val < 1 or n_samples - n_val < 1:
            return order, order[:0]
        return order[n_val:], order[:n_val]

    def fit(self, flow, features):
        """Train ``flow`` in place on ``features`` (list of ``(n, ...)`` tensors)."""
        from tqdm.auto import tqdm

        recipe = self.recipe
        flow.to(self.device, self.dtype)
        train_rows, val_rows = self.split(features[0].shape[0])
        optimizer = recipe.make_optimizer([p for p in flow.parameters() if p.requires_grad])
        scheduler = recipe.make_scheduler(optimizer, self.max_epochs) if recipe.make_scheduler else None
        generator = torch.Generator().manual_seed(self.seed + 1)
        result = TrainingResult()
        best_state, no_improvement = None, 0
        progress = tqdm(range(self.max_epochs), disable=not self.verbose, desc="epochs", leave=False)
        for epoch in progress:
            flow.train()
            order = train_rows[torch.randperm(len(train_rows), generator=generator)]
            total, count = 0.0, 0
            for batch in iter_batches(features, self.batch_size, self.device, order, self.dtype):
                latents, log_jac_det = flow(batch)
                loss = recipe.loss(latents, log_jac_det).mean()
                if not torch.isfinite(loss):
                    raise recipe.diverged(f"the training loss is {loss.item()} at epoch {epoch + 1}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if recipe.clip_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(flow.parameters(), recipe.clip_grad_norm)
                optimizer.step()
                total += loss.item() * recipe.report_scale * batch[0].shape[0]
                count += batch[0].shape[0]
            if scheduler is not None:
                scheduler.step()
            result.loss_curve.append(total / count)
            result.n_iter = epoch + 1
            if len(val_rows):
                monitored = self.mean_loss(flow, [f[val_rows] for f in features])
                result.validation_loss_curve.append(monitored)
                if not math.isfinite(monitored):
                    raise recipe.diverged(f"the validation loss is {monitored} at epoch {epoch + 1}")
            else:
                monitored = result.loss_curve[-1]
            progress.set_postfix(loss=f"{result.loss_curve[-1]:.4g}", monitored=f"{monitored:.4g}")
            # As sklearn's MLP: an epoch counts as an improvement when it beats the best by tol.
            if monitored > result.best_loss - self.tol:
                no_improvement += 1
            else:
                no_improvement = 0
            if monitored < result.best_loss:
                result.best_loss = monitored
                if len(val_rows):
                    best_state = copy.deepcopy(flow.state_dict())
            if no_improvement > self.n_iter_no_change:
                result.stopped_early = True
                break
        progress.close()
        if best_state is not None:
            flow.load_state_dict(best_state)
        flow.eval()
        return result

    def mean_loss(self, flow, features):
        """Mean per-sample loss of ``flow`` over ``features``, without gradients."""
        flow.eval()
        losses = map_batches(lambda b: self.recipe.loss(*flow(b)), features, self.batch_size, self.device, self.dtype)
        flow.train()
        return float(losses.double().mean()) * self.recipe.report_scale


def fused_adam(parameters):
    """``{"fused": True}`` when every parameter is on a CPU or CUDA device, else ``{}``.

    The fused kernel does Adam's per-parameter arithmetic in one pass; on wide
    flows that arithmetic is a large share of a training step.
    """
    parameters = list(parameters)
    if parameters and all(p.device.type in ("cpu", "cuda") for p in parameters):
        return {"fused": True}
    return {}


def seed_from_random_state(random_state):
    """An int seed from a sklearn ``random_state`` (None draws a fresh one)."""
    from sklearn.utils import check_random_state

    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
