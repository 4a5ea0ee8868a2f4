"""L-BFGS with box bounds over the pixels of the images being synthesised, and the schedule
that runs it (plain, or coarse-to-fine over the pyramid's levels).

One L-BFGS *iteration* is one accepted step of the optimiser; each iteration
evaluates the loss and its gradient once or more (the line search may try
several step lengths), so evaluations >= iterations.

Why not scipy's L-BFGS-B: its Fortran works in float64 on the host and, with
bounds, sorts breakpoints every iteration; for the 0.8 M variables of a
512x512 image that costs 0.1-0.25 s per iteration, 10-25% of the network's own
time. This one is projected L-BFGS (the two-loop recursion on the free
variables, a weak-Wolfe line search along the projected path that shrinks a
too-long step and grows a too-short one), all in float32 numpy: 25-40 ms per
iteration at 512x512.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

LOSS_UNIT = 1e4  # the optimiser sees the loss scaled so that the starting loss is this
MEMORY = 10  # correction pairs L-BFGS keeps (scipy's default)
ARMIJO = 1e-4  # sufficient decrease: the loss must fall by this fraction of what its slope promises
CURVATURE = 0.9  # and the slope along the step must have flattened to this fraction (weak Wolfe)
MAX_TRIALS = 20  # step lengths the line search tries before giving up
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


def _finite(loss: float, grad: np.ndarray) -> bool:
    return math.isfinite(loss) and bool(np.all(np.isfinite(grad)))


def two_loop(gradient: np.ndarray, pairs: deque) -> np.ndarray:
    """L-BFGS's estimate of inverse-Hessian x ``gradient`` (Nocedal & Wright, algorithm 7.4).

    ``gradient``: (n,) float32. ``pairs``: (s, y, 1 / s.y) of the last steps,
    oldest first, s and y (n,) float32. The initial Hessian is s.y / y.y of the
    newest pair times the identity (the identity with no pairs). Returns (n,).
    """
    q = gradient.copy()
    alphas = []
    for s, y, rho in reversed(pairs):
        alpha = rho * float(np.dot(s, q))
        q -= np.float32(alpha) * y
        alphas.append(alpha)
    if pairs:
        s, y, rho = pairs[-1]
        q *= np.float32(1.0 / (rho * float(np.dot(y, y))))
    for (s, y, rho), alpha in zip(pairs, reversed(alphas)):
        beta = rho * float(np.dot(y, q))
        q += np.float32(alpha - beta) * s
    return q


@dataclass
class Point:
    """An evaluated iterate: x (n,) float32, the scaled loss, its gradient (n,) float32, aux."""

    x: np.ndarray
    loss: float
    grad: np.ndarray
    aux: list


def line_search(evaluate: Callable[[np.ndarray], Point], start: Point, direction: np.ndarray, step: float,
                project: Callable[[np.ndarray], np.ndarray]) -> Point | None:
    """Find a step along ``direction`` (n,) from ``start`` meeting the weak Wolfe conditions.

    The trial points are ``project(start.x + t direction)``. A step is accepted
    when the loss falls by at least ``ARMIJO`` x the slope's promise and the
    slope along the move has flattened to ``CURVATURE`` x its start, which keeps
    the curvature s.y positive for L-BFGS's update, also where the loss is not
    convex (starting from noise, a Gram loss curves downwards along the
    gradient, and only extrapolating gets past that). Too long: shrink
    (interpolating a quadratic, or bisecting); too short: grow 4x.
    Returns the accepted point; if ``MAX_TRIALS`` run out, or growing stops
    changing the (projected) trial point, the longest step that met the
    sufficient decrease; None when none did.
    """
    short, long = 0.0, math.inf
    longest_good = None
    for _trial in range(MAX_TRIALS):
        trial = project(start.x + np.float32(step) * direction)
        if longest_good is not None and math.isinf(long) and np.array_equal(trial, longest_good.x):
            return longest_good  # every moving variable is at its bound: growing changes nothing
        moved = trial - start.x
        promise = float(np.dot(start.grad, moved))
        if not promise < 0:  # the projection left no descent at this length
            long = step
        else:
            point = evaluate(trial)
            if point.loss > start.loss + ARMIJO * promise:
                long = step
                if longest_good is None:  # a quadratic through loss, slope and this trial
                    curvature = point.loss - start.loss - promise
                    guess = -promise * step / (2 * curvature) if curvature > 0 else 0.5 * step
                    step = min(max(guess, 0.1 * step), 0.5 * step)
                    continue
            elif float(np.dot(point.grad, moved)) < CURVATURE * promise:
                short, longest_good = step, point
            else:
                return point
        step = 4 * step if math.isinf(long) else 0.5 * (short + long)
    return longest_good


def lbfgs(
    value_and_grad: ValueAndGrad, x0: np.ndarray, *, max_iter: int, tol: float,
    on_iteration: Callable[[Progress], None] = lambda progress: None,
    progress: Progress | None = None, bounds: tuple[np.ndarray, np.ndarray] | None = None,
    memory: int = MEMORY,
) -> Progress:
    """Minimise ``value_and_grad`` from ``x0`` (float32, any shape) with L-BFGS.

    ``tol`` means what it means to scipy's L-BFGS-B: stop when an iteration
    reduces the loss by at most ``tol`` relative to max(|loss|, 1), or when
    the largest projected-gradient component is at most ``tol``. The loss is
    optimised in units where the starting loss is ``LOSS_UNIT``, so that
    ``tol`` means the same whatever the image size, layers or weights; reported
    losses stay in the documented units.
    ``on_iteration`` runs after every iteration with the updated ``progress``.
    ``bounds``: (low, high) arrays broadcastable to ``x0``'s shape; every pixel
    then stays in that range (``x0`` is clipped into it first): a variable at a
    bound whose gradient points outwards is held fixed for that iteration, and
    trial points are projected into the box.
    Returns ``progress``; raises ``NonFiniteLoss`` when the loss or gradient
    stops being finite (``progress.best_x`` then holds the last finite iterate).
    """
    progress = progress if progress is not None else Progress()
    shape = x0.shape
    x = np.array(x0, dtype=np.float32).ravel()
    project = lambda point: point  # noqa: E731
    if bounds is not None:
        low, high = (np.broadcast_to(np.asarray(b, np.float32), shape).ravel() for b in bounds)
        project = lambda point: np.clip(point, low, high, out=point)  # noqa: E731
        project(x)
    progress.best_x = x.reshape(shape)
    loss, grad, *_ = value_and_grad(x.reshape(shape))
    progress.evaluations += 1
    if not _finite(loss, grad):
        raise NonFiniteLoss(f"the starting loss is {loss}")
    progress.initial_loss = loss
    scale = LOSS_UNIT / loss if loss > 0 else 1.0

    def evaluate(x: np.ndarray) -> Point:
        progress.evaluations += 1
        loss, grad, *aux = value_and_grad(x.reshape(shape))
        if not _finite(loss, grad):
            raise NonFiniteLoss(f"the loss became {loss} at evaluation {progress.evaluations}")
        return Point(x, loss * scale, np.asarray(grad, np.float32).ravel() * np.float32(scale), aux)

    point = Point(x, loss * scale, np.asarray(grad, np.float32).ravel() * np.float32(scale), [])
    pairs: deque = deque(maxlen=memory)
    progress.stop_reason = f"reached the iteration limit ({max_iter})"
    for _ in range(max_iter):
        if bounds is None:
            fixed = None
            projected = point.grad
        else:  # at a bound with the gradient pushing outwards
            fixed = ((point.x <= low) & (point.grad > 0)) | ((point.x >= high) & (point.grad < 0))
            projected = np.where(fixed, np.float32(0), point.grad)
        if float(np.max(np.abs(projected), initial=0.0)) <= tol:
            progress.stop_reason = f"the projected gradient is below --tol ({tol:g})"
            break
        direction = -two_loop(projected, pairs)
        if fixed is not None:
            direction[fixed] = 0
        if not float(np.dot(projected, direction)) < 0:  # stale curvature: start again, steepest descent
            pairs.clear()
            direction = -projected
        step = 1.0 if pairs else min(1.0, 1.0 / float(np.linalg.norm(direction)))
        new = line_search(evaluate, point, direction, step, project)
        if new is None:
            progress.stop_reason = f"the line search found no lower loss in {MAX_TRIALS} trials"
            break
        moved, change = new.x - point.x, new.grad - point.grad
        sy = float(np.dot(moved, change))
        if sy > 1e-10 * float(np.dot(change, change)):
            pairs.append((moved, change, 1.0 / sy))
        reduction = (point.loss - new.loss) / max(abs(point.loss), abs(new.loss), 1.0)
        point = new
        progress.best_x = point.x.reshape(shape)
        progress.loss_history.append(point.loss / scale)
        if point.aux:
            progress.aux_history.append(np.asarray(point.aux[0], dtype=np.float64).ravel().tolist())
        on_iteration(progress)
        if reduction <= tol:
            progress.stop_reason = f"the loss changed by less than --tol ({tol:g}) in one iteration"
            break
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
             on_stage: Callable = lambda total, first, label: None, start_level: int | None = None) -> Progress:
    """Run L-BFGS as ``--schedule`` says; ``on_iteration(progress)`` after every iteration.

    ``problem``: synthesize.Problem (its ``x0``, ``x0_is_image``, ``level_sizes``,
    ``padding`` and ``stage(level)`` losses). ``max_iter`` counts from the run's
    start; ``progress.start_iteration`` of them are done already (a resumed run).

    plain: all iterations on the full-size canvas. coarse-to-fine: start on a
    canvas the size of the coarsest pyramid level with the loss of that level
    alone, then expand the result to the next level's size (``pyramid.expand``)
    and optimise the loss of the levels that exist there, and so on up to full
    size. The iterations left are shared by ``stage_budgets``; a stage with none
    is skipped. ``start_level``: the stage a resumed run had reached; it carries
    on there (never coarser), from ``x0``, its last saved image. Iterations are
    counted across stages; ``progress.best_x`` is the current stage's image
    (its size tells the level).
    """
    from pyramid import expand, gaussian_pyramid, resize_images
    from vgg16 import pixel_bounds

    bounds = pixel_bounds()  # the saved image is what was optimised: no clipping at the end
    levels = [0] if schedule == "plain" else list(range(octaves - 1, -1, -1))
    if start_level is not None:
        levels = [level for level in levels if level <= start_level]
    x, x_level = problem.x0, None
    if levels != [0]:  # the run's starting loss is the full-size loss of the starting canvas
        progress.initial_loss = problem.stage(0)(x)[0]
    budgets = stage_budgets(max_iter - progress.start_iteration, len(levels))
    for number, (level, budget) in enumerate(zip(levels, budgets, strict=True)):
        if budget == 0 and level > 0:
            continue
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

        if x_level is None:  # the starting image, brought down to this stage's size:
            if level > 0 and problem.x0_is_image:  # an image: its pyramid level
                x = np.asarray(gaussian_pyramid(x, level + 1, problem.padding)[level])
            else:  # noise: resampled, so that it stays noise of full contrast
                x = resize_images(x, (h, w))
        else:  # the previous stage's result, grown one pyramid level at a time
            for finer in range(x_level - 1, level - 1, -1):
                x = expand(x, problem.level_sizes[finer], problem.padding)
        x_level = level
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
