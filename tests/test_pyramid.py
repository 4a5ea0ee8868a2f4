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


# ---------------------------------------------------------------- expand: one level back up


@pytest.mark.parametrize("padding, n", [("valid", 45), ("valid", 46), ("reflect", 40), ("reflect", 41),
                                        ("same", 40), ("same", 41), ("circular", 40)])
def test_expand_is_registered_with_reduce(padding, n):
    # a linear ramp survives expand (linear interpolation) and reduce (a symmetric kernel) unchanged,
    # but only if expand puts every coarse pixel where reduce took it from; compared away from the
    # edges, where expand mirrors and reduce pads
    from pyramid import expand, reduce

    m = reduced_size(n, "reflect" if padding == "circular" else padding)
    ramp = np.broadcast_to(np.arange(m, dtype=np.float32)[None, :, None, None], (1, m, m, 1)) * np.ones((1, 1, 1, 3))
    ramp = ramp + 100 * np.arange(m, dtype=np.float32)[None, None, :, None]  # and a steeper one across
    fine = expand(ramp, (n, n), padding)
    assert fine.shape == (1, n, n, 3)
    back = np.asarray(reduce(fine, padding))
    assert back.shape == ramp.shape
    inner = slice(2, m - 2)  # (circular: where the ramp's wrapped ends do not reach)
    np.testing.assert_allclose(back[:, inner, inner], ramp[:, inner, inner], atol=1e-3)


@pytest.mark.parametrize("padding, centre", [("valid", 2), ("reflect", 0), ("circular", 0)])
def test_expand_puts_coarse_pixels_on_every_other_fine_pixel(padding, centre):
    from pyramid import expand

    coarse = np.random.default_rng(0).uniform(0, 1, (2, 9, 9, 3)).astype(np.float32)
    n = 2 * 9 + (4 if padding == "valid" else 0)
    fine = expand(coarse, (n, n), padding)
    np.testing.assert_allclose(fine[:, centre:centre + 17:2, centre:centre + 17:2], coarse, rtol=1e-6)
    # halfway pixels are the mean of their two neighbours
    np.testing.assert_allclose(fine[:, centre + 1, centre], (coarse[:, 0, 0] + coarse[:, 1, 0]) / 2, rtol=1e-6)


def test_expand_circular_wraps():
    from pyramid import expand

    coarse = np.random.default_rng(1).uniform(0, 1, (1, 8, 8, 3)).astype(np.float32)
    fine = expand(coarse, (16, 16), "circular")
    np.testing.assert_allclose(expand(np.roll(coarse, 1, axis=2), (16, 16), "circular"), np.roll(fine, 2, axis=2),
                               rtol=1e-6)
    np.testing.assert_allclose(fine[:, -1, 0], (coarse[:, -1, 0] + coarse[:, 0, 0]) / 2, rtol=1e-6)
