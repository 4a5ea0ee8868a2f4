"""Closed forms of the Gaussian pyramid."""

import numpy as np
import pytest

from pyramid import gaussian_pyramid, generating_kernel, level_sizes, reduced_size


def test_kernel_is_burt_adelson_with_a_04():
    k = generating_kernel()
    np.testing.assert_allclose(k, [0.05, 0.25, 0.4, 0.25, 0.05], atol=1e-7)
    assert k.sum() == pytest.approx(1.0)
    np.testing.assert_array_equal(k, k[::-1])


@pytest.mark.parametrize("n, valid, same", [(5, 1, 3), (6, 1, 3), (7, 2, 4), (64, 30, 32), (512, 254, 256)])
def test_reduced_size(n, valid, same):
    assert reduced_size(n, "valid") == valid == (n - 5) // 2 + 1
    assert reduced_size(n, "same") == same


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_pyramid_shapes_match_level_sizes(padding):
    x = np.random.default_rng(0).standard_normal((2, 37, 50, 3)).astype(np.float32)
    levels = gaussian_pyramid(x, 3, padding)
    assert [tuple(level.shape[1:3]) for level in levels] == level_sizes(37, 50, 3, padding)
    assert all(level.shape[0] == 2 and level.shape[3] == 3 for level in levels)


def test_constant_image_stays_constant_and_level0_is_the_image():
    x = np.full((1, 21, 21, 3), 7.0, np.float32)
    levels = gaussian_pyramid(x, 3, "valid")
    np.testing.assert_array_equal(np.asarray(levels[0]), x)
    for level in levels[1:]:
        np.testing.assert_allclose(np.asarray(level), 7.0, rtol=1e-6)


def test_reduce_matches_separable_numpy_filter():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 13, 11, 3)).astype(np.float32)
    k = generating_kernel()
    # vertical pass with stride 2, then horizontal pass with stride 2, no padding
    rows = np.stack([np.tensordot(k, x[0, 2 * i:2 * i + 5], axes=(0, 0)) for i in range(reduced_size(13, "valid"))])
    expected = np.stack([np.tensordot(k, rows[:, 2 * j:2 * j + 5], axes=(0, 1)) for j in range(reduced_size(11, "valid"))], axis=1)
    got = np.asarray(gaussian_pyramid(x, 2, "valid")[1])[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
