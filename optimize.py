"""L-BFGS-B over the pixels of the images being synthesised (scipy's implementation).

One L-BFGS *iteration* is one accepted step of the optimiser; each iteration
evaluates the loss and its gradient once or more (the line search may try
several step lengths), so evaluations >= iterations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.optimize

LOSS_UNIT = 1e4  # the optimiser sees the loss scaled so that the starting loss is this
ValueAndGrad = Callable[[np.ndarray], tuple]  # x -> (loss, grad) or (loss, grad, aux)


@dataclass
class Progress:
    """What the optimiser has done so far; kept up to date while it runs."""

    initial_loss: float = math.nan
    loss_history: list[float] = field(default_factory=list)  # loss after each iteration
    aux_history: list[list[float]] = field(default_factory=list)  # value_and_grad's aux, each iteration
    start_iteration: int = 0  # iterations done before this optimisation (a resumed run)
    stages: list[dict] = field(default_factory=list)  # coarse-to-fine: what each stage did
    evaluations: int = 0
    best_x: np.ndarray | None = None  # last accepted iterate (float32, image shape)
    stop_reason: str = ""

    @property
    def iterations(self) -> int:
        """Iterations done, counting those of the run this one resumed."""
        return self.start_iteration + len(self.loss_history)

    @property
    def final_loss(self) -> float:
        return self.loss_history[-1] if self.loss_history else self.initial_loss


class NonFiniteLoss(ArithmeticError):
    """The loss or its gradient became NaN or infinite."""


def lbfgs(
    value_and_grad: ValueAndGrad, x0: np.ndarray, *, max_iter: int, tol: float,
    on_iteration: Callable[[Progress], None] = lambda progress: None,
    progress: Progress | None = None, bounds: tuple[np.ndarray, np.ndarray] | None = None,
) -> Progress:
    """Minimise ``value_and_grad`` from ``x0`` (float32, any shape) with L-BFGS-B.

    ``tol`` is scipy's ``tol`` (relative loss reduction and projected gradient
    size at which to stop). The loss is optimised in units where the starting
    loss is ``LOSS_UNIT``, so that ``tol`` means the same whatever the image
    size, layers or weights; reported losses stay in the documented units.
    ``on_iteration`` runs after every iteration with the updated ``progress``.
    ``bounds``: (low, high) arrays broadcastable to ``x0``'s shape; every pixel
    then stays in that range (``x0`` is clipped into it first).
    Returns ``progress``; raises ``NonFiniteLoss`` when the loss or gradient
    stops being finite (``progress.best_x`` then holds the last finite iterate).
    """
    progress = progress if progress is not None else Progress()
    shape = x0.shape
    box = None
    if bounds is not None:
        low, high = (np.broadcast_to(b, shape).astype(np.float64).ravel() for b in bounds)
        x0 = np.clip(x0, low.reshape(shape), high.reshape(shape))
        box = scipy.optimize.Bounds(low, high)
    progress.best_x = x0.astype(np.float32)
    loss0 = value_and_grad(progress.best_x)[0]
    progress.initial_loss = loss0
    if not math.isfinite(loss0):
        raise NonFiniteLoss(f"the starting loss is {loss0}")
    scale = LOSS_UNIT / loss0 if loss0 > 0 else 1.0

    last_aux = []

    def fun(flat: np.ndarray) -> tuple[float, np.ndarray]:
        progress.evaluations += 1
        loss, grad, *aux = value_and_grad(flat.astype(np.float32).reshape(shape))
        if not (math.isfinite(loss) and np.all(np.isfinite(grad))):
            raise NonFiniteLoss(f"the loss became {loss} at evaluation {progress.evaluations}")
        last_aux[:] = aux
        return loss * scale, grad.astype(np.float64).ravel() * scale

    def callback(intermediate_result: scipy.optimize.OptimizeResult) -> None:
        # L-BFGS-B accepts the point it evaluated last, so the last aux belongs to it
        progress.loss_history.append(float(intermediate_result.fun) / scale)
        if last_aux:
            progress.aux_history.append(np.asarray(last_aux[0], dtype=np.float64).ravel().tolist())
        progress.best_x = intermediate_result.x.astype(np.float32).reshape(shape)
        on_iteration(progress)

    result = scipy.optimize.minimize(
        fun, x0.astype(np.float64).ravel(), jac=True, method="L-BFGS-B", tol=tol, bounds=box,
        callback=callback, options={"maxiter": max_iter},
    )
    progress.stop_reason = str(result.message)
    return progress

