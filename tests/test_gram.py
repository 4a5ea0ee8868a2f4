"""Closed forms of the Gram matrices, targets, join modes and the loss."""

import numpy as np
import pytest

from gram import gram_matrix, loss_per_level, multiscale_grams, source_targets, style_loss, weighted_sum


def test_gram_of_all_ones_is_one_over_channels():
    g = np.asarray(gram_matrix(np.ones((1, 4, 5, 8), np.float32)))
    np.testing.assert_allclose(g, np.full((1, 8, 8), 1 / 8), rtol=1e-6)


def test_gram_matches_numpy_definition():
    f = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    g = np.asarray(gram_matrix(f))
    for n in range(2):
        flat = f[n].reshape(12, 5)
        np.testing.assert_allclose(g[n], flat.T @ flat / 12 / 5, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g, np.transpose(g, (0, 2, 1)), rtol=1e-6)


def test_style_loss_is_sum_of_squares_over_terms_and_frames():
    grams = [np.ones((2, 3, 3), np.float32), np.zeros((2, 4, 4), np.float32)]
    targets = [np.zeros((3, 3), np.float32), np.full((4, 4), 0.5, np.float32)]
    # frames x (9 x 1^2) + frames x (16 x 0.5^2) = 2 * 9 + 2 * 4
    assert float(style_loss(grams, targets)) == pytest.approx(26.0)
    with pytest.raises(ValueError):
        style_loss(grams, targets[:1])


def test_a_term_of_weight_0_takes_no_part_even_when_infinite():
    assert weighted_sum([2.0, 0.0], [3.0, float("inf")]) == 6.0 and weighted_sum([0.0], [1.0]) == 0.0
    # two levels of two terms; the second level's second term is infinite and weighted 0, and its
    # first term weighted 0 too: that level's loss is 0, not NaN
    grams = [np.ones((1, 2, 2), np.float32)] * 3 + [np.full((1, 2, 2), np.inf, np.float32)]
    targets = [np.zeros((2, 2), np.float32)] * 4
    total, per_level = loss_per_level(grams, targets, [1.0, 0.5, 0.0, 0.0], 2)
    np.testing.assert_allclose(np.asarray(per_level), [4.0 + 2.0, 0.0])
    assert float(total) == pytest.approx(6.0)


def _identity_extractor(x):
    return [x]


def test_targets_join_average_max_and_mul():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((16, 16, 3)), rng.standard_normal((20, 12, 3))
    ga = [np.asarray(g)[0] for g in multiscale_grams(a[None].astype(np.float32), _identity_extractor, 2, "valid")]
    gb = [np.asarray(g)[0] for g in multiscale_grams(b[None].astype(np.float32), _identity_extractor, 2, "valid")]
    avg = source_targets([a, b], _identity_extractor, 2, "valid", "average", mul=2.0)
    mx = source_targets([a, b], _identity_extractor, 2, "valid", "max")
    assert len(avg) == len(mx) == 2  # level-major: 2 levels x 1 layer
    for i in range(2):
        np.testing.assert_allclose(avg[i], (ga[i] + gb[i]), rtol=1e-5)  # mean x mul 2
        np.testing.assert_allclose(mx[i], np.maximum(ga[i], gb[i]), rtol=1e-6)
