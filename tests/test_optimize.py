"""The L-BFGS optimiser: closed forms of its parts first, then convergence on known problems,
and the same steps as the host-side float32 optimiser it replaced."""

import json
from pathlib import Path

import numpy as np
import pytest
from keras import ops

import autodiff
from optimize import LOSS_UNIT, Point, Progress, Trial, lbfgs, line_search, two_loop

RNG = np.random.default_rng(0)
REFERENCE = json.loads((Path(__file__).parent / "data" / "lbfgs_reference.json").read_text())


def quadratic(curvature: np.ndarray, target: np.ndarray):
    """sum(c (x - t)^2) in keras.ops, no aux."""

    def loss_fn(x):
        diff = ops.subtract(x, target)
        return ops.sum(ops.multiply(curvature, diff * diff)), ops.zeros((0,))

    return loss_fn


# ---------------------------------------------------------------- two-loop recursion


def run_two_loop(g, pairs, padding=0):
    """two_loop on numpy pairs [(s, y)], with ``padding`` unused slots in front (rho 0, zero vectors)."""
    zero = np.zeros_like(g)
    slots = [(zero, zero)] * padding + [(s, y) for s, y in pairs]
    rho = np.array([0.0] * padding + [1 / float(s @ y) for s, y in pairs], np.float32)
    gamma = float(pairs[-1][0] @ pairs[-1][1]) / float(pairs[-1][1] @ pairs[-1][1]) if pairs else 1.0
    return autodiff.to_numpy(two_loop(ops.convert_to_tensor(g), slots, ops.convert_to_tensor(rho), gamma))


def test_two_loop_without_pairs_is_the_identity():
    g = RNG.normal(size=7).astype(np.float32)
    np.testing.assert_array_equal(run_two_loop(g, []), g)
    np.testing.assert_array_equal(run_two_loop(g, [], padding=3), g)  # unused slots change nothing


def test_two_loop_inverts_a_multiple_of_the_identity():
    # every pair has y = 3 s: the inverse Hessian is exactly I / 3
    pairs = []
    for _ in range(4):
        s = RNG.normal(size=6).astype(np.float32)
        pairs.append((s, 3 * s))
    g = RNG.normal(size=6).astype(np.float32)
    np.testing.assert_allclose(run_two_loop(g, pairs), g / 3, rtol=1e-5)
    np.testing.assert_allclose(run_two_loop(g, pairs, padding=6), g / 3, rtol=1e-5)


def test_two_loop_satisfies_the_secant_equation():
    # BFGS's inverse Hessian maps the newest gradient change onto the newest step: H y = s
    a = RNG.normal(size=(8, 8))
    hessian = (a @ a.T + 8 * np.eye(8)).astype(np.float32)
    pairs = []
    for _ in range(5):
        s = RNG.normal(size=8).astype(np.float32)
        pairs.append((s, hessian @ s))
    s, y = pairs[-1]
    np.testing.assert_allclose(run_two_loop(y, pairs, padding=5), s, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- line search


def numpy_trials(f, start: Point, direction: np.ndarray, project=lambda x: x, calls=None):
    """``line_search``'s try_step for a numpy function f(x) -> (loss, grad), as the device program does it."""

    def try_step(step, reference):
        x = project(start.x + np.float32(step) * direction)
        if calls is not None:
            calls.append(x)
        loss, grad = f(x)
        moved = x - start.x
        reference_x = start.x if reference is None else reference.x
        return Trial(Point(x, loss, grad, None), float(start.grad @ moved), float(grad @ moved),
                     bool(np.array_equal(x, reference_x)), bool(np.isfinite(loss)))

    return try_step


def half_square(x):
    return float(x @ x) / 2, x.copy()


def test_line_search_takes_the_unit_step_on_a_well_scaled_quadratic():
    # f = |x|^2 / 2 from x = 1, direction -x: the unit step lands on the minimum and is Wolfe
    start = Point(np.ones(3, np.float32), *half_square(np.ones(3, np.float32)), None)
    trial = line_search(numpy_trials(half_square, start, -start.x), start, 1.0)
    np.testing.assert_array_equal(trial.point.x, np.zeros(3))


def test_line_search_grows_a_step_that_is_too_short():
    # f = |x|^2 / 2 from x = 1 along -x with a first step of 1e-3: only growing reaches the
    # curvature condition (slope flattened to 0.9 x its start needs a step >= 0.1)
    calls = []
    start = Point(np.ones(3, np.float32), 1.5, np.ones(3, np.float32), None)
    trial = line_search(numpy_trials(half_square, start, -start.x, calls=calls), start, 1e-3)
    assert 0.1 <= 1 - trial.point.x[0] <= 1.9  # Armijo (step < 2 (1 - 1e-4)) and curvature (step >= 0.1)
    assert len(calls) == 5  # 1e-3, 4e-3, 1.6e-2, 6.4e-2, 0.256


def test_line_search_stops_growing_once_the_bounds_stop_every_variable():
    # f = -sum(x) in [0, 1] from 0.5: the slope never flattens (no Wolfe point), and from step 0.5 on
    # the projected trial no longer changes: take it instead of growing 20 times
    calls = []

    def f(x):
        return -float(x.sum()), -np.ones_like(x)

    start = Point(np.full(4, 0.5, np.float32), *f(np.full(4, 0.5, np.float32)), None)
    trial = line_search(numpy_trials(f, start, np.ones(4, np.float32), lambda x: np.clip(x, 0, 1), calls),
                        start, 0.25)
    np.testing.assert_array_equal(trial.point.x, np.ones(4))
    assert len(calls) == 3  # steps 0.25, 1 and 4, which changes nothing (seen in the same program as its loss)


def test_line_search_gives_up_when_nothing_is_lower():
    # a direction that points uphill at every length
    start = Point(np.ones(2, np.float32), 1.0, -np.ones(2, np.float32), None)  # a lying gradient
    assert line_search(numpy_trials(half_square, start, np.ones(2, np.float32)), start, 1.0) is None


def test_line_search_stops_at_a_non_finite_loss():
    from optimize import NonFiniteLoss

    start = Point(np.ones(2, np.float32), *half_square(np.ones(2, np.float32)), None)
    with pytest.raises(NonFiniteLoss):
        line_search(numpy_trials(lambda x: (float("nan"), x), start, -start.x), start, 1.0)


# ---------------------------------------------------------------- the whole optimiser


def test_keeps_pace_with_scipy_on_an_ill_conditioned_quadratic():
    # the reference: scipy's L-BFGS-B (float64 Fortran) with the same memory, same iterations
    import scipy.optimize

    curvature = np.logspace(0, 3, 40)
    target = RNG.uniform(-5, 5, 40)
    reference = scipy.optimize.minimize(
        lambda x: (float(np.sum(curvature * (x - target) ** 2)), 2 * curvature * (x - target)), np.zeros(40),
        jac=True, method="L-BFGS-B", options={"maxiter": 150, "ftol": 0, "gtol": 0})
    progress = lbfgs(quadratic(curvature.astype(np.float32), target.astype(np.float32)), np.zeros(40, np.float32),
                     max_iter=150, tol=0)
    error, reference_error = np.abs(progress.best_x - target).max(), np.abs(reference.x - target).max()
    assert error < 1e-3 and error < 2 * reference_error  # measured: 8.0e-4 and 5.9e-4
    assert progress.evaluations <= 1.1 * 150 + 1
    assert all(b <= a for a, b in zip(progress.loss_history, progress.loss_history[1:]))  # never goes up


def test_converges_on_rosenbrock():
    def rosenbrock(p):
        x, y = p[0], p[1]
        return (1 - x) ** 2 + 100 * (y - x * x) ** 2, ops.zeros((0,))

    progress = lbfgs(rosenbrock, np.array([-1.2, 1.0], np.float32), max_iter=200, tol=0)
    np.testing.assert_allclose(progress.best_x, [1, 1], atol=2e-3)


def test_passes_a_region_of_negative_curvature():
    # f = (|x|^2 - 1)^2 from near 0 (a maximum): curvature is negative along the gradient, as for a
    # Gram loss starting from noise; the minimum is the unit sphere
    def loss_fn(x):
        return (ops.sum(x * x) - 1) ** 2, ops.zeros((0,))

    x0 = np.full(50, 1e-3, np.float32)
    progress = lbfgs(loss_fn, x0, max_iter=50, tol=0)
    assert np.linalg.norm(progress.best_x) == pytest.approx(1, abs=1e-3)


def test_bounds_hold_and_the_solution_is_the_projection():
    # separable quadratic whose minimum lies partly outside [0, 1]: the answer is its clip
    curvature = np.array([1, 10, 100, 1, 10, 100], np.float32)
    target = np.array([-2, 0.5, 3, 0.25, 1.5, -0.5], np.float32)
    seen = []
    progress = lbfgs(quadratic(curvature, target), np.full(6, 0.5, np.float32), max_iter=100, tol=1e-9,
                     bounds=(np.float32(0), np.float32(1)), on_iteration=lambda p: seen.append(p.best_x.copy()))
    assert all(np.all((x >= 0) & (x <= 1)) for x in seen)
    np.testing.assert_allclose(progress.best_x, np.clip(target, 0, 1), atol=1e-4)
    assert progress.best_x[0] == 0 and progress.best_x[2] == 1  # exactly on the active bounds


def test_start_is_clipped_into_the_bounds():
    progress = lbfgs(quadratic(np.ones(2, np.float32), np.zeros(2, np.float32)), np.array([-5, 5], np.float32),
                     max_iter=0, tol=0, bounds=(np.float32(-1), np.float32(1)))
    np.testing.assert_array_equal(progress.best_x, [-1, 1])
    assert progress.initial_loss == 2


def test_the_loss_scale_does_not_matter():
    # the optimiser works in units where the start is LOSS_UNIT: f and 1000 f take the same steps
    curvature = np.logspace(0, 2, 10).astype(np.float32)
    target = np.linspace(-1, 1, 10).astype(np.float32)
    small = quadratic(curvature, target)
    big = quadratic(1000 * curvature, target)
    a = lbfgs(small, np.zeros(10, np.float32), max_iter=15, tol=0)
    b = lbfgs(big, np.zeros(10, np.float32), max_iter=15, tol=0)
    np.testing.assert_allclose(a.best_x, b.best_x, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.array(b.loss_history) / 1000, a.loss_history, rtol=1e-3)
    assert LOSS_UNIT == 1e4


@pytest.mark.parametrize("tol, reason", [(1e-1, "loss changed"), (1e6, "projected gradient")])
def test_tol_stops_early_and_says_why(tol, reason):
    curvature = np.logspace(0, 3, 20).astype(np.float32)
    progress = lbfgs(quadratic(curvature, np.ones(20, np.float32)), np.zeros(20, np.float32), max_iter=500, tol=tol)
    assert reason in progress.stop_reason
    assert len(progress.loss_history) < 500


def test_iteration_limit_and_callback_count():
    calls = []
    progress = Progress()
    lbfgs(quadratic(np.logspace(0, 4, 30).astype(np.float32), np.ones(30, np.float32)),
          np.zeros(30, np.float32), max_iter=7, tol=0, progress=progress, on_iteration=lambda p: calls.append(1))
    assert len(calls) == len(progress.loss_history) == 7
    assert "iteration limit" in progress.stop_reason
    assert progress.best_x.shape == (30,) and progress.best_x.dtype == np.float32


def test_the_same_steps_as_the_host_optimiser_it_replaced():
    # lbfgs_reference.json: loss after each iteration of the float32 numpy L-BFGS this project used
    # before its vector work moved to the device (commit a2ae687), on this bounded quadratic; the
    # device version differs only in the order of float32 sums (measured: 3e-5 relative at most)
    reference = REFERENCE["quadratic"]
    rng = np.random.default_rng(1)
    curvature = np.logspace(0, 3, 40).astype(np.float32)
    target = rng.uniform(-5, 5, 40).astype(np.float32)
    progress = lbfgs(quadratic(curvature, target), np.zeros(40, np.float32), max_iter=60, tol=0,
                     bounds=(np.float32(-4), np.float32(4)))
    np.testing.assert_allclose(progress.loss_history, reference["loss_history"], rtol=2e-4)
    assert progress.evaluations == reference["evaluations"]


def test_the_aux_of_every_iteration_is_recorded():
    def loss_fn(x):
        loss = ops.sum(ops.multiply(np.array([1, 10, 100], np.float32), x * x))
        return loss, ops.stack([loss, 2 * loss])

    progress = lbfgs(loss_fn, np.ones(3, np.float32), max_iter=3, tol=0)
    assert len(progress.aux_history) == len(progress.loss_history) == 3
    for (a, b), loss in zip(progress.aux_history, progress.loss_history):
        assert a == pytest.approx(loss) and b == pytest.approx(2 * loss)
