"""Device-aware training of a flow on cached features, with early stopping."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

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


class FlowTrainer:
    """Maximum-likelihood training of a flow on features computed once.

    Parameters
    ----------
    loss : callable
        ``loss(latents, log_jac_det) -> (n,)`` per-sample negative log-likelihood.
    make_optimizer : callable
        ``make_optimizer(parameters) -> torch.optim.Optimizer``.
    make_scheduler : callable or None
        ``make_scheduler(optimizer, max_epochs) -> scheduler`` stepped once per epoch.
    batch_size, max_epochs : int
    validation_fraction : float
        Share of the rows held out to monitor the NLL; 0 monitors the training loss.
    n_iter_no_change : int
        Epochs without an improvement of at least ``tol`` before stopping.
    tol : float
    clip_grad_norm : float or None
        Gradient-norm clipping threshold.
    device : str
    seed : int
        Seeds the split and the shuffling.
    verbose : bool
        Show a progress bar over epochs.
    report_scale : float
        Factor applied to the loss in the curves and the stopping rule (e.g.
        one over the latent size, for a loss per dimension); the optimised loss
        is unscaled.
    dtype : torch.dtype
        Precision of the flow and of the batches.
    """

    def __init__(
        self, loss, make_optimizer, make_scheduler=None, *, batch_size=32, max_epochs=100,
        validation_fraction=0.1, n_iter_no_change=10, tol=1e-4, clip_grad_norm=None,
        device="cpu", seed=0, verbose=False, report_scale=1.0, dtype=torch.float32,
    ):
        self.loss = loss
        self.make_optimizer = make_optimizer
        self.make_scheduler = make_scheduler
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.clip_grad_norm = clip_grad_norm
        self.device = device
        self.seed = seed
        self.verbose = verbose
        self.report_scale = report_scale
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

        flow.to(self.device, self.dtype)
        train_rows, val_rows = self.split(features[0].shape[0])
        optimizer = self.make_optimizer([p for p in flow.parameters() if p.requires_grad])
        scheduler = self.make_scheduler(optimizer, self.max_epochs) if self.make_scheduler else None
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
                loss = self.loss(latents, log_jac_det).mean()
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"training diverged: the loss is {loss.item()} at epoch {epoch + 1}. "
                        f"Lower the learning rate or the affine clamp."
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.clip_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(flow.parameters(), self.clip_grad_norm)
                optimizer.step()
                total += loss.item() * self.report_scale * batch[0].shape[0]
                count += batch[0].shape[0]
            if scheduler is not None:
                scheduler.step()
            result.loss_curve.append(total / count)
            result.n_iter = epoch + 1
            if len(val_rows):
                monitored = self.mean_loss(flow, [f[val_rows] for f in features])
                result.validation_loss_curve.append(monitored)
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
        losses = map_batches(lambda b: self.loss(*flow(b)), features, self.batch_size, self.device, self.dtype)
        flow.train()
        return float(losses.double().mean()) * self.report_scale


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
