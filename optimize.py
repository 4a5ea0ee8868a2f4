"""L-BFGS-B over the pixels of the images being synthesised (scipy's implementation), and the
schedule that runs it (plain, or coarse-to-fine over the pyramid's levels).

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
    first = value_and_grad(progress.best_x)
    loss0 = progress.initial_loss = first[0]
    if not math.isfinite(loss0):
        raise NonFiniteLoss(f"the starting loss is {loss0}")
    scale = LOSS_UNIT / loss0 if loss0 > 0 else 1.0

    last_aux = []
    start = {"x": progress.best_x, "value": first}  # scipy's first call asks for the start again

    def fun(flat: np.ndarray) -> tuple[float, np.ndarray]:
        progress.evaluations += 1
        x = flat.astype(np.float32).reshape(shape)
        if start and np.array_equal(x, start["x"]):
            loss, grad, *aux = start.pop("value")
            start.clear()
        else:
            loss, grad, *aux = value_and_grad(x)
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


def stage_budgets(max_iter: int, stages: int) -> list[int]:
    """Iterations of each coarse-to-fine stage, coarsest first: the full-size stage gets half of
    ``max_iter``, the coarser stages share the rest equally (they cost 4x, 16x, ... less each)."""
    if stages == 1:
        return [max_iter]
    final = max_iter - max_iter // 2
    share, extra = divmod(max_iter - final, stages - 1)
    return [share + (1 if i < extra else 0) for i in range(stages - 1)] + [final]


def optimise(problem, schedule: str, octaves: int, max_iter: int, tol: float,
             on_iteration: Callable[[Progress], None], progress: Progress,
             on_stage: Callable = lambda total, first, label: None) -> Progress:
    """Run L-BFGS-B as ``--schedule`` says; ``on_iteration(progress)`` after every iteration.

    ``problem``: synthesize.Problem (its ``x0``, ``level_sizes`` and ``stage(level)``
    losses). ``max_iter`` counts from the run's start (``progress.start_iteration``).

    plain: all iterations on the full-size canvas. coarse-to-fine: start on a
    canvas the size of the coarsest pyramid level with the loss of that level
    alone, then upsample the result to the next level's size and optimise the
    loss of the levels that exist there, and so on up to full size. Iterations
    are counted across stages; ``progress.best_x`` is the current stage's
    image (smaller than the canvas in coarse stages).
    """
    from pyramid import resize_images
    from vgg16 import pixel_bounds

    bounds = pixel_bounds()  # the saved image is what was optimised: no clipping at the end
    remaining = max_iter - progress.start_iteration
    levels = [0] if schedule == "plain" else list(range(octaves - 1, -1, -1))
    x = problem.x0
    if len(levels) > 1:  # the run's starting loss is the full-size loss of the starting canvas
        progress.initial_loss = problem.stage(0)(x)[0]
    for number, (level, budget) in enumerate(zip(levels, stage_budgets(remaining, len(levels)), strict=True)):
        h, w = problem.level_sizes[level]
        label = "synthesising" if len(levels) == 1 else (
            f"stage {number + 1}/{len(levels)}: {w}x{h}, {octaves - level} octave(s)")
        on_stage(progress.iterations + budget, progress.iterations, label)
        stage = Progress()
        evaluations_before = progress.evaluations

        def forward(stage_progress: Progress) -> None:
            progress.loss_history.append(stage_progress.loss_history[-1])
            if stage_progress.aux_history:
                progress.aux_history.append(stage_progress.aux_history[-1])
            progress.evaluations = evaluations_before + stage_progress.evaluations
            progress.best_x = stage_progress.best_x
            on_iteration(progress)

        x = resize_images(x, (h, w))
        try:
            lbfgs(problem.stage(level), x, max_iter=budget, tol=tol, on_iteration=forward, progress=stage,
                  bounds=bounds)
        finally:
            if len(levels) == 1:
                progress.initial_loss = stage.initial_loss
            if stage.best_x is not None:
                progress.best_x = stage.best_x
            progress.stop_reason = stage.stop_reason
            progress.stages.append({"level": level, "size": [h, w], "iterations": len(stage.loss_history),
                                    "initial_loss": stage.initial_loss, "final_loss": stage.final_loss})
        x = stage.best_x
    return progress
