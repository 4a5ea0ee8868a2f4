"""The compiled loss gradient against central finite differences, with real VGG-19 weights."""

import numpy as np

from optimize import Minimiser
from gram import loss_per_level, multiscale_grams, source_targets
from vgg16 import build_extractor, preprocess


def test_gradient_matches_central_differences(vgg19, example_rgb):
    layers, octaves, padding = ["block1_pool", "block3_conv2"], 2, "valid"
    extractor = build_extractor("vgg19", vgg19.weights, layers, padding)
    targets = source_targets([preprocess(example_rgb[:96, :96])], extractor, octaves, padding, "average")
    weights = [1.0] * 4
    loss_fn = lambda x: loss_per_level(multiscale_grams(x, extractor, octaves, padding), targets, weights, 2)  # noqa: E731
    shape = (1, 72, 72, 3)  # the smallest side 2 octaves allow is 67
    value_and_grad = Minimiser(loss_fn, shape).evaluate  # loss, gradient and aux, compiled once

    rng = np.random.default_rng(0)
    x = preprocess(rng.uniform(60, 200, shape)).astype(np.float32)
    loss, grad, per_level = value_and_grad(x)
    assert per_level.shape == (2,) and abs(per_level.sum() - loss) <= 1e-5 * loss
    assert grad.shape == shape and np.isfinite(loss) and loss > 0
    for trial in range(3):
        d = rng.standard_normal(shape).astype(np.float32)
        d /= np.linalg.norm(d)
        eps = 5.0  # pixel units (0..255): large enough to rise above float32 round-off
        numeric = (value_and_grad(x + eps * d)[0] - value_and_grad(x - eps * d)[0]) / (2 * eps)
        analytic = float(np.sum(grad * d))
        assert abs(numeric - analytic) <= 1e-2 * abs(analytic), (trial, numeric, analytic)
    # single pixels too: the largest gradient entries
    for index in np.argsort(np.abs(grad).ravel())[-3:]:
        e = np.zeros(grad.size, np.float32)
        e[index] = 1.0
        e = e.reshape(shape)
        numeric = (value_and_grad(x + 5.0 * e)[0] - value_and_grad(x - 5.0 * e)[0]) / 10.0
        assert abs(numeric - grad.ravel()[index]) <= 1e-2 * abs(grad.ravel()[index])
