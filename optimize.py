"""L-BFGS with box bounds over the pixels of the images being synthesised, and the schedule
that runs it (plain, or coarse-to-fine over the pyramid's levels).

One L-BFGS *iteration* is one accepted step of the optimiser; each iteration
evaluates the loss and its gradient once or more (the line search may try
several step lengths), so evaluations >= iterations.

Projected L-BFGS: the two-loop recursion on the free variables, a weak-Wolfe
line search along the projected path that shrinks a too-long step and grows a
too-short one. (Not scipy's L-BFGS-B: its Fortran works in float64 on the host
and, with bounds, sorts breakpoints every iteration: 0.1-0.25 s per iteration
at 512x512.)

Where it runs: the vectors (image, gradient, the correction pairs) stay on the
device the loss runs on, as backend tensors; two programs compiled once per
canvas shape do all the vector work (``Minimiser``): a *trial* (trial point
projected into the box, loss, gradient, and the dot products the line search
needs, in one program with the loss) and a *direction* (projected gradient,
two-loop recursion). The line search's decisions are made on the host from the
few scalars each program returns; the image crosses to the host only when it
is asked for (``Progress.best_x``: snapshots, the progress picture, the end).
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import autodiff

LOSS_UNIT = 1e4  # the optimiser sees the loss scaled so that the starting loss is this
MEMORY = 10  # correction pairs L-BFGS keeps (scipy's default)
ARMIJO = 1e-4  # sufficient decrease: the loss must fall by this fraction of what its slope promises
CURVATURE = 0.9  # and the slope along the step must have flattened to this fraction (weak Wolfe)
MAX_TRIALS = 20  # step lengths the line search tries before giving up
DRIFT_WINDOW = 10  # coarse-to-fine: iterations after a growth whose coarse levels are compared with the last stage's
LossFn = Callable  # keras.ops: x -> (scalar loss, aux (k,) tensor of values to report)


@dataclass
class Progress:
    """What the optimiser has done so far; kept up to date while it runs."""

    initial_loss: float = math.nan
    loss_history: list[float] = field(default_factory=list)  # loss after each iteration
    aux_history: list[list[float]] = field(default_factory=list)  # the loss function's aux, each iteration
    start_iteration: int = 0  # iterations done before this optimisation (a resumed run)
    stages: list[dict] = field(default_factory=list)  # coarse-to-fine: what each stage did
    evaluations: int = 0
    current: object = field(default=None, repr=False)  # last accepted iterate: a backend tensor, image shape
    stop_reason: str = ""
    initial_aux: list[float] | None = None  # the loss function's aux at the starting point
    starting_loss_seconds: float | None = None  # coarse-to-fine: the full-size starting loss (its compilation)
    _host: tuple = field(default=(None, None), repr=False)  # (current, its numpy copy)

    @property
    def best_x(self) -> np.ndarray | None:
        """The last accepted iterate as float32 numpy (copied from the device once per iterate)."""
        if self.current is None:
            return None
        if self._host[0] is not self.current:
            self._host = (self.current, autodiff.to_numpy(self.current).astype(np.float32, copy=False))
        return self._host[1]

    @property
    def iterations(self) -> int:
        """Iterations done, counting those of the run this one resumed."""
        return self.start_iteration + len(self.loss_history)

    @property
    def final_loss(self) -> float:
        return self.loss_history[-1] if self.loss_history else self.initial_loss


class NonFiniteLoss(ArithmeticError):
    """The loss or its gradient became NaN or infinite."""


# ----------------------------------------------------------------------------
# The device programs (keras.ops; compiled by autodiff)


def _dot(a, b):
    from keras import ops

    return ops.sum(a * b)


def two_loop(gradient, pairs: list, rho, gamma):
    """L-BFGS's estimate of inverse-Hessian x ``gradient`` (Nocedal & Wright, algorithm 7.4).

    ``gradient``: tensor of any shape. ``pairs``: (s, y) of the last steps,
    oldest first, each the gradient's shape; ``rho``: (len(pairs),) 1 / s.y, 0
    for an unused slot (its s and y may then be anything finite: it changes
    nothing). ``gamma``: the initial inverse Hessian's scale, s.y / y.y of the
    newest pair (1 with none). Returns the gradient's shape.
    """
    q = gradient
    alphas = []
    for i in reversed(range(len(pairs))):
        s, y = pairs[i]
        alpha = rho[i] * _dot(s, q)
        q = q - alpha * y
        alphas.append(alpha)
    q = q * gamma
    for i, (s, y) in enumerate(pairs):
        beta = rho[i] * _dot(y, q)
        q = q + (alphas[len(pairs) - 1 - i] - beta) * s
    return q


def _held(x, grad, low, high):
    """Variables at a bound whose gradient pushes outwards (held fixed this iteration): bool, x's shape."""
    from keras import ops

    return ops.logical_or(ops.logical_and(x <= low, grad > 0), ops.logical_and(x >= high, grad < 0))


def direction_program(low, high) -> Callable:
    """(x, grad, S, Y, rho, gamma) -> (direction, [max |projected gradient|, projected.direction,
    |direction|]): the search direction of projected L-BFGS, zero on held variables.

    ``S``, ``Y``: tuples of MEMORY tensors the shape of x (oldest first; see ``two_loop``).
    """
    from keras import ops

    def direction(x, grad, S, Y, rho, gamma):
        held = _held(x, grad, low, high)
        projected = ops.where(held, 0.0, grad)
        d = ops.where(held, 0.0, -two_loop(projected, list(zip(S, Y)), rho, gamma))
        stats = ops.stack([ops.max(ops.abs(projected)), _dot(projected, d), ops.sqrt(_dot(d, d))])
        return d, stats

    return direction


TRIAL_STATS = ("loss", "promise", "slope", "sy", "yy", "moved_from_reference", "finite")


def project_program(low, high) -> Callable:
    """(start_x, direction, step) -> the trial point ``start_x + step direction`` projected into [low, high]."""
    from keras import ops

    def project(start_x, direction, step):
        return ops.minimum(ops.maximum(start_x + step * direction, low), high)

    return project


def trial_stats(x, loss, grad, aux, start_x, start_grad, scale, reference) -> tuple:
    """(scaled grad, s, y, stats) of a trial point x with its loss, gradient and aux (see ``trial_program``)."""
    from keras import ops

    loss, grad = loss * scale, grad * scale
    s, y = x - start_x, grad - start_grad
    finite = ops.logical_and(ops.isfinite(loss), ops.all(ops.isfinite(grad)))
    stats = ops.stack([ops.cast(loss, "float32"), _dot(start_grad, s), _dot(grad, s), _dot(s, y), _dot(y, y),
                       ops.max(ops.abs(x - reference)), ops.cast(finite, "float32")])
    return grad, s, y, ops.concatenate([stats, ops.cast(ops.reshape(aux, (-1,)), "float32")])


def trial_program(value_and_grad: Callable, low, high) -> Callable:
    """(start_x, start_grad, direction, step, scale, reference) -> (x, grad, s, y, stats).

    x = the trial point ``start_x + step direction`` projected into [low, high];
    loss and gradient there, times ``scale``; s = x - start_x, y = grad -
    start_grad; stats = ``TRIAL_STATS`` (the scaled loss, start_grad.s (the
    slope's promise), grad.s, s.y, y.y, max |x - reference|, 1 when loss and
    gradient are finite) followed by the loss function's aux, flattened: one
    small vector, the only thing the host reads. All on the device, in one
    program with the loss.
    """
    project = project_program(low, high)

    def trial(start_x, start_grad, direction, step, scale, reference):
        x = project(start_x, direction, step)
        loss, grad, aux = value_and_grad(x)
        return (x, *trial_stats(x, loss, grad, aux, start_x, start_grad, scale, reference))

    return trial


def host_trial(evaluate: Callable, low, high) -> Callable:
    """``trial_program``'s function for a loss evaluated by the host (``evaluate``: x tensor -> (loss,
    grad tensor, aux), e.g. ``tiles.TiledLoss``): the projection and the statistics are compiled, the
    evaluation between them is not."""
    project, stats = autodiff.compile(project_program(low, high)), autodiff.compile(trial_stats)

    def trial(start_x, start_grad, direction, step, scale, reference):
        x = project(start_x, direction, step)
        loss, grad, aux = evaluate(x)
        return (x, *stats(x, np.float32(loss), grad, np.asarray(aux, np.float32), start_x, start_grad, scale,
                          reference))

    return trial


# ----------------------------------------------------------------------------
# The host side: line search and iterations, on scalars


@dataclass
class Point:
    """An evaluated iterate: x and the scaled gradient (backend tensors), the scaled loss, aux (numpy)."""

    x: object
    loss: float
    grad: object
    aux: np.ndarray


@dataclass
class Trial:
    """A trial step's point and what the line search needs of it (see ``trial_program``)."""

    point: Point
    promise: float  # start.grad . (x - start.x): what the slope promises (< 0: descent)
    slope: float  # point.grad . (x - start.x)
    unchanged: bool  # x equals the reference point given (growing the step moved nothing)
    finite: bool
    s: object = None  # x - start.x
    y: object = None  # point.grad - start.grad
    sy: float = 0.0
    yy: float = 0.0


def line_search(try_step: Callable[[float, Point | None], Trial], start: Point, step: float) -> Trial | None:
    """Find a step from ``start`` meeting the weak Wolfe conditions.

    ``try_step(t, reference)`` evaluates the projected trial point at step
    length t (``unchanged`` compares it with ``reference``'s x). A step is
    accepted when the loss falls by at least ``ARMIJO`` x the slope's promise
    and the slope along the move has flattened to ``CURVATURE`` x its start,
    which keeps the curvature s.y positive for L-BFGS's update, also where the
    loss is not convex (starting from noise, a Gram loss curves downwards along
    the gradient, and only extrapolating gets past that). Too long: shrink
    (interpolating a quadratic, or bisecting); too short: grow 4x.
    Returns the accepted trial; if ``MAX_TRIALS`` run out, or growing stops
    changing the (projected) trial point, the longest step that met the
    sufficient decrease; None when none did. Raises NonFiniteLoss at a trial
    point with a descent promise whose loss or gradient is not finite.

    Each trial is evaluated (the projection, the loss and the dot products are
    one program on the device), also the rare ones that turn out unusable: a
    projection that leaves no descent, or a grown step that moved nothing.
    """
    short, long = 0.0, math.inf
    longest_good = None
    for _trial in range(MAX_TRIALS):
        trial = try_step(step, None if longest_good is None else longest_good.point)
        if longest_good is not None and math.isinf(long) and trial.unchanged:
            return longest_good  # every moving variable is at its bound: growing changes nothing
        if not trial.promise < 0:  # the projection left no descent at this length
            long = step
        else:
            if not trial.finite:
                raise NonFiniteLoss("the loss or its gradient stopped being finite")
            if trial.point.loss > start.loss + ARMIJO * trial.promise:
                long = step
                if longest_good is None:  # a quadratic through loss, slope and this trial
                    curvature = trial.point.loss - start.loss - trial.promise
                    guess = -trial.promise * step / (2 * curvature) if curvature > 0 else 0.5 * step
                    step = min(max(guess, 0.1 * step), 0.5 * step)
                    continue
            elif trial.slope < CURVATURE * trial.promise:
                short, longest_good = step, trial
            else:
                return trial
        step = 4 * step if math.isinf(long) else 0.5 * (short + long)
    return longest_good


class Minimiser:
    """Projected L-BFGS for one loss on one tensor shape, its programs compiled once.

    ``loss_fn``: keras.ops, x (``shape``, float32) -> (loss, aux), compiled
    with its gradient into the trial program; or, for a loss the host drives
    (``tiles.TiledLoss``), ``evaluate``: x tensor -> (loss, grad tensor, aux).
    ``bounds``: (low, high) broadcastable to ``shape`` (e.g. (3,) per colour
    channel), or None. ``memory``: correction pairs kept. ``evaluate`` is the
    loss at one point, ``run`` the optimisation.
    """

    def __init__(self, loss_fn: LossFn | None, shape: tuple[int, ...], bounds=None, memory: int = MEMORY,
                 evaluate: Callable | None = None):
        self.shape = tuple(shape)
        self.loss_fn, self.memory = loss_fn, memory
        if bounds is None:
            bounds = (-np.inf, np.inf)
        self.low, self.high = (np.asarray(b, np.float32) for b in bounds)
        low, high = autodiff.to_device(self.low), autodiff.to_device(self.high)
        self._evaluate = evaluate
        if evaluate is not None:
            self._trial = host_trial(evaluate, low, high)
        else:
            self._trial = autodiff.compile(trial_program(autodiff.value_and_grad(loss_fn), low, high))
        self._direction = autodiff.compile(direction_program(low, high))
        self._scale = autodiff.compile(lambda grad, scale: grad * scale)
        self._zeros = None

    def _zero(self):
        if self._zeros is None:
            self._zeros = autodiff.to_device(np.zeros(self.shape, np.float32))
        return self._zeros

    def to_device(self, x) -> object:
        """``x`` (numpy, ``shape``) projected into the bounds, on the device."""
        return autodiff.to_device(np.clip(np.asarray(x, np.float32).reshape(self.shape), self.low, self.high))

    def _try(self, start: Point, direction, step: float, scale: float, reference) -> Trial:
        x, grad, s, y, stats = self._trial(start.x, start.grad, direction, np.float32(step), np.float32(scale),
                                           reference)
        stats = autodiff.to_numpy(stats)  # the only transfer: a few scalars, then aux
        loss, promise, slope, sy, yy, moved, finite = (float(v) for v in stats[:len(TRIAL_STATS)])
        return Trial(Point(x, loss, grad, stats[len(TRIAL_STATS):]), promise, slope, moved == 0, finite == 1,
                     s, y, sy, yy)

    def evaluate(self, x) -> tuple[float, np.ndarray, np.ndarray]:
        """Loss, gradient (numpy, ``shape``) and aux at ``x`` (numpy, clipped into the bounds, or a
        backend tensor)."""
        x = self.to_device(x) if isinstance(x, np.ndarray) else x
        if self._evaluate is not None:  # directly: no trial step's image-sized arrays beside it
            loss, grad, aux = self._evaluate(x)
            return loss, autodiff.to_numpy(grad), np.asarray(aux)
        zero = self._zero()
        point = self._try(Point(x, 0.0, zero, None), zero, 0.0, 1.0, x).point
        return point.loss, autodiff.to_numpy(point.grad), point.aux

    def run(self, x0, *, max_iter: int, tol: float, on_iteration: Callable[[Progress], None] = lambda p: None,
            progress: Progress | None = None) -> Progress:
        """Minimise from ``x0`` (numpy, clipped into the bounds first); see ``lbfgs``."""
        progress = progress if progress is not None else Progress()
        zero = self._zero()
        x = self.to_device(x0)
        progress.current = x
        first = self._try(Point(x, 0.0, zero, None), zero, 0.0, 1.0, x)
        progress.evaluations += 1
        loss = first.point.loss
        if not first.finite:
            raise NonFiniteLoss(f"the starting loss is {loss}")
        progress.initial_loss = loss
        if first.point.aux is not None and first.point.aux.size:
            progress.initial_aux = first.point.aux.astype(np.float64).tolist()
        scale = LOSS_UNIT / loss if loss > 0 else 1.0
        point = Point(x, loss * scale, self._scale(first.point.grad, np.float32(scale)), None)  # optimiser's units
        pairs: deque = deque(maxlen=self.memory)  # (s, y, 1 / s.y, s.y / y.y), oldest first

        def try_step(step: float, reference: Point | None) -> Trial:
            progress.evaluations += 1
            return self._try(point, direction, step, scale, point.x if reference is None else reference.x)

        progress.stop_reason = f"reached the iteration limit ({max_iter})"
        for _ in range(max_iter):
            direction, stats = self._direction(point.x, point.grad, *self._memory(pairs))
            largest, descent, norm = (float(v) for v in autodiff.to_numpy(stats))
            if largest <= tol:
                progress.stop_reason = f"the projected gradient is below --tol ({tol:g})"
                break
            if not descent < 0:  # stale curvature: start again, steepest descent
                pairs.clear()
                direction, stats = self._direction(point.x, point.grad, *self._memory(pairs))
                norm = float(autodiff.to_numpy(stats)[2])
            step = 1.0 if pairs or norm == 0 else min(1.0, 1.0 / norm)
            try:
                new = line_search(try_step, point, step)
            except NonFiniteLoss as err:
                raise NonFiniteLoss(f"{err} at evaluation {progress.evaluations}") from None
            if new is None:
                progress.stop_reason = f"the line search found no lower loss in {MAX_TRIALS} trials"
                break
            if new.sy > 1e-10 * new.yy:
                pairs.append((new.s, new.y, 1.0 / new.sy, new.sy / new.yy))
            reduction = (point.loss - new.point.loss) / max(abs(point.loss), abs(new.point.loss), 1.0)
            point = new.point
            progress.current = point.x
            progress.loss_history.append(point.loss / scale)
            if point.aux is not None and point.aux.size:
                progress.aux_history.append(point.aux.astype(np.float64).tolist())
            on_iteration(progress)
            if reduction <= tol:
                progress.stop_reason = f"the loss changed by less than --tol ({tol:g}) in one iteration"
                break
        return progress

    def _memory(self, pairs: deque) -> tuple:
        """The direction program's (S, Y, rho, gamma) for ``pairs``: always ``memory`` slots (one
        compiled program), the unused ones first, pointing at a zero tensor, with rho 0."""
        unused = self.memory - len(pairs)
        zero = self._zero()
        S = tuple([zero] * unused + [p[0] for p in pairs])
        Y = tuple([zero] * unused + [p[1] for p in pairs])
        rho = np.array([0.0] * unused + [p[2] for p in pairs], np.float32)
        gamma = np.float32(pairs[-1][3] if pairs else 1.0)
        return S, Y, rho, gamma


def lbfgs(
    loss_fn: LossFn, x0: np.ndarray, *, max_iter: int, tol: float,
    on_iteration: Callable[[Progress], None] = lambda progress: None,
    progress: Progress | None = None, bounds: tuple | None = None, memory: int = MEMORY,
) -> Progress:
    """Minimise ``loss_fn`` (keras.ops: x -> (loss, aux)) from ``x0`` (float32 numpy, any shape).

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
    x0 = np.asarray(x0, np.float32)
    return Minimiser(loss_fn, x0.shape, bounds, memory).run(x0, max_iter=max_iter, tol=tol,
                                                            on_iteration=on_iteration, progress=progress)


def drift_program(padding: str, depth: int, skip: int) -> Callable:
    """(x, previous) -> (depth - skip,) float32: how far each coarser pyramid level of the canvas ``x``
    (count, h, w, 3), levels ``skip`` .. ``depth`` - 1, lies from the previous stage's result
    ``previous`` (the canvas of level ``skip`` below x's) and its own levels, as the RMS difference
    in pixel values (0-255), finest first (``padding``: the canvas's, so that the sizes agree)."""
    from keras import ops

    from pyramid import gaussian_pyramid

    def drift(x, previous):
        levels = zip(gaussian_pyramid(x, depth, padding)[skip:], gaussian_pyramid(previous, depth - skip, padding),
                     strict=True)
        return ops.stack([ops.sqrt(ops.mean(ops.square(a - b))) for a, b in levels])

    return drift


def coarse_drift(previous: np.ndarray, padding: str, depth: int, skip: int) -> Callable:
    """A grown stage's measure of what it keeps of the previous stage's result ``previous`` (numpy,
    the canvas of level ``skip`` below the stage's): canvas tensor -> [RMS difference at each coarser
    level, finest first] (``drift_program``, one program on the device; a few numbers back)."""
    program, previous = autodiff.compile(drift_program(padding, depth, skip)), autodiff.to_device(previous)
    return lambda x: [float(v) for v in autodiff.to_numpy(program(x, previous))]


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
             on_stage: Callable = lambda total, first, label: None, start_level: int | None = None,
             coarsest: int | None = None) -> Progress:
    """Run L-BFGS as ``--schedule`` says; ``on_iteration(progress)`` after every iteration.

    ``problem``: synthesize.Problem (its ``x0``, ``x0_is_image``, ``first_start``, ``level_sizes``, ``padding``,
    ``stage(level)``, the ``Minimiser`` of each stage's loss, and ``grow(x, level)`` -> (the grown
    image, per frame whether it was reduced back or None), recorded as the stage's ``reduced_back``).
    ``max_iter`` counts from the run's start; ``progress.start_iteration`` of them are done
    already (a resumed run).

    plain: all iterations on the full-size canvas. coarse-to-fine: start on a
    canvas the size of the coarsest pyramid level with the loss of that level
    alone, then grow the result to the next level's size (``problem.grow``: ``pyramid.expand``,
    plus the sources' detail with --growth keep or detail) and optimise the loss of the levels that
    exist there, and so on up to full size. The iterations left are shared by
    ``stage_budgets``; a stage with none is skipped. ``start_level``: the stage a resumed run had reached; it carries
    on there (never coarser), from ``x0``, its last saved image. ``coarsest``: the coarsest level
    whose loss has a Gram term (default the coarsest level): coarse-to-fine starts there, not on
    a level with nothing of the texture to match. Iterations are
    counted across stages; ``progress.best_x`` is the current stage's image
    (its size tells the level). The backend's out-of-memory errors end in
    ``autodiff.DeviceOutOfMemory`` naming the stage's size.
    """
    from pyramid import gaussian_pyramid, resize_images

    top = octaves - 1 if coarsest is None else coarsest
    levels = [0] if schedule == "plain" else list(range(top, -1, -1))
    if start_level is not None:
        levels = [level for level in levels if level <= start_level]
    x, x_level, reduced_back = problem.x0, None, None
    at_full_size = "at {1}x{0}".format(*problem.level_sizes[0])
    if levels != [0]:  # the run's starting loss is the full-size loss of the starting canvas
        started = time.perf_counter()
        try:
            with autodiff.out_of_memory_as_error(at_full_size):
                progress.initial_loss = problem.stage(0).evaluate(x)[0]
        finally:  # an interruption while it compiles: the time it took so far
            progress.starting_loss_seconds = round(time.perf_counter() - started, 4)
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
        ticks = [time.perf_counter()]  # the stage's start, then the end of each iteration

        drift, drifts = None, []  # after a growth: the coarse levels' drift (coarse_drift), grown and per iteration

        def forward(stage_progress: Progress) -> None:
            nonlocal drift
            ticks.append(time.perf_counter())
            progress.loss_history.append(stage_progress.loss_history[-1])
            if stage_progress.aux_history:
                progress.aux_history.append(stage_progress.aux_history[-1])
            progress.evaluations = evaluations_before + stage_progress.evaluations
            progress.current = stage_progress.current
            on_iteration(progress)
            if drift is not None:  # after the bookkeeping: a failure here loses no iteration
                drifts.append(drift(stage_progress.current))
                if len(drifts) > DRIFT_WINDOW:
                    drift = None  # lets go of the previous result on the device

        growing = time.perf_counter()
        if x_level is None:  # the starting image, brought down to this stage's size:
            if level > 0 and problem.x0_is_image:  # an image: its pyramid level
                reduced = autodiff.compile(lambda image: gaussian_pyramid(image, level + 1, problem.padding)[level])
                with autodiff.out_of_memory_as_error(at_full_size):
                    x = autodiff.to_numpy(reduced(autodiff.to_device(x)))
            elif level == top and problem.first_start is not None:  # made for this stage: the sources in pieces
                x = problem.first_start
            else:  # noise: resampled, so that it stays noise of full contrast
                x = resize_images(x, (h, w))
        else:  # the previous stage's result, grown one pyramid level at a time
            with autodiff.out_of_memory_as_error(f"growing the image to {w}x{h}"):
                previous, previous_level = x, x_level
                for finer in range(x_level - 1, level - 1, -1):
                    x, reduced_back = problem.grow(x, finer)
        grow_seconds = time.perf_counter() - growing  # the growth is timed apart
        grown, x_level = x_level is not None, level
        try:
            with autodiff.out_of_memory_as_error(f"at {w}x{h}"):
                minimiser = problem.stage(level)
                if grown:  # what the stage starts from (clipped into the bounds) against the last result
                    drift = coarse_drift(previous, problem.padding, top - level + 1, previous_level - level)
                    drifts.append(drift(minimiser.to_device(x)))
                ticks[0] = time.perf_counter()
                minimiser.run(x, max_iter=budget, tol=tol, on_iteration=forward, progress=stage)
        finally:
            if len(levels) == 1:
                progress.initial_loss = stage.initial_loss
            if stage.current is not None:
                progress.current = stage.current
            progress.stop_reason = stage.stop_reason
            steps = [b - a for a, b in zip(ticks[1:], ticks[2:])]  # the first includes the compilation
            median = statistics.median(steps) if steps else 0.0
            progress.stages.append({"level": level, "size": [h, w], "iterations": len(stage.loss_history),
                                    "initial_octave_losses": stage.initial_aux,
                                    "initial_loss": stage.initial_loss, "final_loss": stage.final_loss,
                                    "reduced_back": reduced_back,
                                    "coarse_drift": drifts or None,
                                    "seconds": round(time.perf_counter() - ticks[0], 4),  # a stopped one's too
                                    "iteration_seconds": round(median, 5),
                                    "grow_seconds": round(grow_seconds, 4),
                                    "first_iteration_seconds": round(ticks[1] - ticks[0], 4) if len(ticks) > 1
                                    else None})
        x = stage.best_x
    return progress
