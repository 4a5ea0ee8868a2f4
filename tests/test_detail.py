"""Coarse-to-fine growth with the sources' detail (detail.py): exact cases first, then a small run."""

from __future__ import annotations

import json

import numpy as np
import pytest

import detail
from conftest import EXAMPLE
from detail import DetailGrowth, Library, fine_places, reduce_back
from pyramid import Reduction, expand, reduce, reduced_size, reduction_symbol, source_pyramids
from vgg16 import preprocess

PADDINGS = [("circular", 96), ("reflect", 96), ("reflect", 95), ("valid", 101), ("same", 95)]


@pytest.fixture(scope="module")
def gravel(example_rgb) -> np.ndarray:
    """The example in caffe space, (512, 512, 3)."""
    return preprocess(example_rgb)


def growth_of(sources, padding: str = "reflect", octaves: int = 3, seed: int = 0) -> DetailGrowth:
    return DetailGrowth(source_pyramids(sources, octaves, padding), padding, seed)


def reduced(fine: np.ndarray, padding: str) -> np.ndarray:
    from keras import ops

    return ops.convert_to_numpy(reduce(fine, padding))


def mean_error(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).mean())


@pytest.mark.parametrize("padding,n", PADDINGS)
def test_a_coarse_level_of_the_source_grows_back_into_the_source(gravel, padding, n):
    """Where the canvas is a piece of a source, every coarse neighbourhood finds itself, and the
    grown image is that piece one level finer (Laplacian reconstruction, not an enlargement's blur),
    exactly away from the edges, where the canvas's padding makes neighbourhoods the source lacks
    (on a wrap-around canvas, to within the correction that makes it reduce back exactly, which
    spreads from the seam where the piece's opposite edges meet)."""
    fine = gravel[None, 200:200 + n, 120:120 + n]
    coarse = reduced(fine, padding)
    grown = growth_of([gravel])(coarse, (n, n), padding, 0)
    smooth = expand(coarse, (n, n), padding)
    assert grown.shape == fine.shape and grown.dtype == np.float32
    inner, coarse_inner = (slice(None), slice(8, -8), slice(8, -8)), (slice(None), slice(4, -4), slice(4, -4))
    exact = 1e-2 if padding == "circular" else 1e-3  # circular: measured 3e-3
    assert mean_error(grown[inner], fine[inner]) < exact * mean_error(smooth[inner], fine[inner])
    assert mean_error(grown, fine) < 0.3 * mean_error(smooth, fine)
    # and it reduces back to the coarse level it came from
    back, smooth_back = reduced(grown, padding), reduced(smooth, padding)
    assert mean_error(back[coarse_inner], coarse[coarse_inner]) < 1e-3 * mean_error(smooth_back, coarse)
    assert mean_error(back, coarse) < 0.2 * mean_error(smooth_back, coarse)


@pytest.mark.parametrize("source_padding", ["valid", "reflect", "same"])
def test_the_sources_own_padding_places_their_detail_alike(gravel, source_padding):
    """The sources' pyramid is made with --padding-mode (valid: each level a few pixels smaller and
    offset); where their coarse pixels sit one level finer follows it. (The piece starts where the
    source's coarse pixels do: on even rows, odd ones for same padding's.)"""
    from pyramid import first_centre

    top = 200 + first_centre(512, source_padding) % 2
    fine = gravel[None, top:top + 96, top:top + 96]
    coarse = reduced(fine, "circular")
    growth = growth_of([gravel], source_padding)
    grown = growth.with_detail(coarse, (96, 96), "circular", growth.library(0))  # (uncorrected: see above)
    inner = (slice(None), slice(8, -8), slice(8, -8))
    assert mean_error(grown[inner], fine[inner]) < 1e-3 * mean_error(expand(coarse, (96, 96), "circular"), fine)


def test_a_flat_source_has_no_detail_to_add():
    flat = np.full((64, 64, 3), 12.5, np.float32)
    coarse = np.random.default_rng(0).uniform(-50, 50, (1, 16, 16, 3)).astype(np.float32)
    grown = growth_of([flat])(coarse, (32, 32), "circular", 1)
    np.testing.assert_allclose(grown, expand(coarse, (32, 32), "circular"), atol=1e-4)


class _Numbered:
    """A library whose detail differs for every coarse pixel asked about, in the order asked: what
    is added shows how the blocks are blended."""

    empty = False

    def __init__(self):
        self.asked = 0

    def nearest_blocks(self, features):
        count = len(features)
        numbers = np.arange(self.asked, self.asked + count, dtype=np.float32)
        self.asked += count
        offsets = np.arange(27, dtype=np.float32).reshape(3, 3, 3) / 27
        return numbers[:, None, None, None] + offsets[None]


@pytest.mark.parametrize("padding,n", [*PADDINGS, ("circular", 33), ("same", 96), ("valid", 100)])
def test_the_blocks_blend_as_weighted_means_of_every_block_on_a_pixel(monkeypatch, padding, n):
    """Each fine pixel gets the tent-weighted mean of the blocks on it (linear interpolation of the
    detail: no seam where neighbouring coarse pixels' blocks meet, nothing lost where they
    overlap), checked against a scatter that adds every contribution one by one; valid padding's
    outermost fine pixels lie beyond every block and get none."""
    monkeypatch.setattr(detail, "QUERY_PIXELS", 100)  # several chunks of rows per frame
    m = reduced_size(n, padding)
    growth = DetailGrowth([], "reflect", seed=0)
    library = _Numbered()
    coarse = np.zeros((2, m, m, 3), np.float32)
    added = growth.with_detail(coarse, (n, n), padding, library) - expand(coarse, (n, n), padding)

    blocks = _Numbered().nearest_blocks(np.zeros(2 * m * m)).reshape(2, m, m, 3, 3, 3)
    total, weight = np.zeros((2, n + 1, n + 1, 3)), np.zeros((n + 1, n + 1))
    places = fine_places(m, n, padding)
    for i in range(m):
        for j in range(m):
            for a in range(3):
                for b in range(3):
                    w = detail.TENT[a] * detail.TENT[b]
                    total[:, places[i, a], places[j, b]] += w * blocks[:, i, j, a, b]
                    weight[places[i, a], places[j, b]] += w
    weight = weight[:n, :n]
    np.testing.assert_allclose(weight[3:-3, 3:-3], 1.0)  # inside, the tent weights are linear interpolation's
    covered = weight > 0
    expected = np.zeros_like(added)
    expected[:, covered] = total[:, :n, :n][:, covered] / weight[covered][:, None]
    np.testing.assert_allclose(added, expected, rtol=1e-5, atol=1e-3)
    uncovered = n - covered[n // 2].sum()  # along one axis
    assert uncovered == (0 if padding != "valid" else 2 + (n + 1) % 2)  # valid: 0 and n-1, and n-2 if n is even


def test_fine_places_put_each_coarse_pixel_where_reduce_centres_its_window():
    from pyramid import first_centre

    for padding, n in PADDINGS:
        m = reduced_size(n, padding)
        places = fine_places(m, n, padding)
        assert places.shape == (m, 3)
        centres = places[:, 1]
        np.testing.assert_array_equal(centres, 2 * np.arange(m) + first_centre(n, padding))
        for offset in range(3):  # one fine pixel per coarse pixel and offset: no two blocks overwrite
            on = places[:, offset][places[:, offset] < n]
            assert len(set(on.tolist())) == len(on)
    assert fine_places(4, 8, "circular")[0, 0] == 7  # wraps around


def test_frames_grow_independently_and_the_same_seed_grows_the_same(gravel):
    # frame 0 like the source's coarse level (reduced back), frame 1 noise (not): each as alone
    rng = np.random.default_rng(1)
    piece = reduced(gravel[None, 100:148, 40:88], "circular")
    coarse = np.concatenate([piece, rng.uniform(-80, 120, (1, 24, 24, 3)).astype(np.float32)])
    growth = growth_of([gravel], "circular", seed=3)
    both = growth(coarse, (48, 48), "circular", 1)
    assert growth.corrected == [True, False]
    for frame in range(2):
        alone = growth_of([gravel], "circular", seed=3)(coarse[frame:frame + 1], (48, 48), "circular", 1)
        np.testing.assert_allclose(both[frame:frame + 1], alone, atol=1e-5)
    np.testing.assert_array_equal(both, growth_of([gravel], "circular", seed=3)(coarse, (48, 48), "circular", 1))


def test_a_large_source_is_sampled_down_to_the_candidate_limit(monkeypatch, gravel):
    monkeypatch.setattr(detail, "MAX_CANDIDATES", 500)
    levels = source_pyramids([gravel, gravel[::-1]], 2, "valid")
    library = Library([(a, b) for a, b in levels], "valid", np.random.default_rng(0))
    assert len(library.blocks) == 500 and library.tree.n == 500
    assert library.blocks.shape[1:] == (3, 3, 3)


def test_a_source_too_small_for_a_neighbourhood_leaves_the_enlargement():
    tiny = np.random.default_rng(0).uniform(-50, 50, (12, 12, 3)).astype(np.float32)
    growth = growth_of([tiny], octaves=4)
    coarse = np.zeros((1, 8, 8, 3), np.float32)
    assert growth.library(2).empty  # level 3 of a 12 px source: 2x2
    np.testing.assert_array_equal(growth(coarse, (16, 16), "circular", 2), expand(coarse, (16, 16), "circular"))


def test_the_fourier_reduction_is_pyramid_reduce_and_its_transpose_and_inverse_are_exact():
    rng = np.random.default_rng(5)
    x, z = rng.normal(0, 40, (24, 16)).astype(np.float32), rng.normal(0, 40, (12, 8)).astype(np.float32)
    reduction = Reduction(24, 16)
    np.testing.assert_allclose(reduction.reduce(x), reduced(x[None, :, :, None], "circular")[0, :, :, 0], atol=1e-3)
    assert np.sum(reduction.reduce(x) * z) == pytest.approx(np.sum(x * reduction.transpose(z)), rel=1e-5)  # R^T
    correction = reduction.correction(reduction.reduce(x) - z)
    np.testing.assert_allclose(reduction.reduce(x - correction), z, atol=1e-3)  # reduces to z exactly
    # and it is the smallest such change: orthogonal to every change that leaves the reduction alone
    still = rng.normal(0, 1, x.shape).astype(np.float32)
    still -= reduction.correction(reduction.reduce(still))
    np.testing.assert_allclose(reduction.reduce(still), 0, atol=1e-5)
    assert abs(np.sum(correction * still)) < 1e-5 * np.linalg.norm(correction) * np.linalg.norm(still)
    symbol = reduction_symbol(64)
    assert symbol.max() == pytest.approx(0.5) and symbol.min() == pytest.approx(0.09)  # never 0: always solvable


def test_reducing_back_alternates_with_the_bounds_and_declines_a_correction_stronger_than_the_detail():
    rng = np.random.default_rng(6)
    reduction = Reduction(32, 32)

    def reduce_all(images):
        return np.stack([reduction.reduce(images[0, :, :, k]) for k in range(3)], axis=-1)[None]

    def correct_all(images, target):
        return np.stack([reduction.correction(reduction.reduce(images[0, :, :, k]) - target[0, :, :, k])
                         for k in range(3)], axis=-1)[None]

    coarse = reduce_all(rng.uniform(-50, 50, (1, 32, 32, 3)))  # what an image within +-50 reduces to
    grown = (expand(coarse, (32, 32), "circular") + rng.normal(0, 30, (1, 32, 32, 3))).astype(np.float32)
    with pytest.raises(ValueError, match="even sides"):
        Reduction(32, 31)
    free = reduce_back(grown[0], coarse[0], np.inf, (-np.inf, np.inf))[None]
    assert free.dtype == np.float32
    np.testing.assert_allclose(reduce_all(free), coarse, atol=1e-3)
    # bounds the grown image overshoots (an image within them reduces to ``coarse``): each pass
    # clips, then corrects; after all passes the image is inside them and reduces back far closer
    # than after one correction and its clipping
    low, high = np.full(3, -50.0), np.full(3, 50.0)
    bounded = reduce_back(grown[0], coarse[0], np.inf, (low, high))[None]
    assert np.all(bounded >= low - 1e-4) and np.all(bounded <= high + 1e-4)
    once = np.clip(grown - correct_all(grown, coarse), low, high)
    assert np.abs(reduce_all(bounded) - coarse).mean() < 0.05 * np.abs(reduce_all(once) - coarse).mean()  # 0.001, 0.82
    rms = np.sqrt(np.mean(np.square(correct_all(grown, coarse))))  # found on the coarse grid, as this
    assert reduce_back(grown[0], coarse[0], 0.99 * rms, (-np.inf, np.inf)) is None
    assert reduce_back(grown[0], coarse[0], 1.01 * rms, (-np.inf, np.inf)) is not None


def test_a_wrap_around_growth_reduces_back_unless_that_takes_more_than_the_sources_detail(gravel):
    growth = growth_of([gravel], "circular")
    piece = reduced(gravel[None, 100:196, 40:136], "circular")  # a coarse level like the source's
    grown = growth(piece, (96, 96), "circular", 0)
    assert growth.corrected == [True]
    back = np.stack([Reduction(96, 96).reduce(grown[0, :, :, k]) for k in range(3)], axis=-1)
    np.testing.assert_allclose(back, piece[0], atol=0.05)
    # coarse noise (like a first stage's, full of the finest detail a reduced image lacks): reducing
    # back would take swings far beyond the photo's detail; the growth keeps its detail alone
    noise = np.random.default_rng(7).normal(0, 60, (1, 48, 48, 3)).astype(np.float32)
    grown = growth(noise, (96, 96), "circular", 0)
    assert growth.corrected == [False]
    np.testing.assert_array_equal(grown, growth.with_detail(noise, (96, 96), "circular", growth.library(0)))
    growth(piece, (96, 96), "reflect", 0)
    assert growth.corrected is None  # an open canvas: not tried
    from vgg16 import pixel_bounds

    low, high = pixel_bounds([gravel])  # a run's bounds: the photo's range
    bounded = DetailGrowth(growth.source_levels, "circular", 0, (low, high))(piece, (96, 96), "circular", 0)
    assert np.all(bounded >= low - 1e-3) and np.all(bounded <= high + 1e-3)
    alone = DetailGrowth(growth.source_levels, "circular", 0, keep=False)  # --growth detail
    np.testing.assert_array_equal(alone(piece, (96, 96), "circular", 0),
                                  alone.with_detail(piece, (96, 96), "circular", alone.library(0)))
    assert alone.corrected is None


# ---------------------------------------------------------------- a small real run


def growth_jumps(tmp_path, growth: str, *extra: str) -> tuple[list[dict], float]:
    """What each growth of a 96 px run did to the coarse octaves (``quality.growth_damage``, over
    the first 10 iterations), and the run's final loss."""
    from quality import growth_damage
    from synthesize import main

    out = tmp_path / "-".join((growth, *extra))
    assert main(["-s", str(EXAMPLE), "-ow", "96", "--octaves", "3", "-m", "24", "--random-seed", "2",
                 "--growth", growth, *extra, "--output-dir", str(out), "--quiet"]) == 0
    record = json.loads(next(out.glob("*/run.json")).read_text())
    assert record["args"]["growth"] == growth
    return growth_damage(record, 10), record["final_loss"]


def test_growing_with_the_sources_detail_and_reducing_back_keeps_the_coarse_octaves(tmp_path):
    """The growths of a 96 px run (3 octaves, the wrap-around canvas) with the default --growth keep
    and --seed random, whose first stage starts from the sources in pieces: both growths are reduced
    back (as run.json records), and the coarse octaves keep what the previous stage left them
    (measured: 1.00x after each growth; at most 3.3x and 1.1x in the first 10 iterations of the two
    stages). Started from noise (--seed noise), the first stage keeps finer detail than a reduced
    image has, and the first growth is left with the detail alone (4.1x; the final loss twice as
    high). Enlarging alone (--growth smooth): 153x and 21x. In pictures (run.json's coarse_drift,
    RMS in pixel values): kept, the coarse levels are the previous result's right after each growth
    (0.001-0.04) and within 2.2-3.8 of it in the first 10 iterations; the noise start's first growth
    moves them by 10.5, enlarging alone by 5.4-7.9 (its blur)."""
    kept_rows, kept_loss = growth_jumps(tmp_path, "keep")
    noise_rows, noise_loss = growth_jumps(tmp_path, "keep", "--seed", "noise")
    smooth_rows, smooth_loss = growth_jumps(tmp_path, "smooth")

    def worst(rows):
        return [max(r for r in row["after_growth"] if r is not None) for row in rows]

    assert len(kept_rows) == len(noise_rows) == len(smooth_rows) == 2
    assert [row["reduced_back"] for row in kept_rows] == [[True], [True]]
    assert [row["reduced_back"] for row in noise_rows] == [[False], [True]]
    assert [row["reduced_back"] for row in smooth_rows] == [None, None]
    assert max(worst(kept_rows)) < 1.1 and worst(noise_rows)[0] > 2
    assert all(k < s / 2 for k, s in zip(worst(kept_rows), worst(smooth_rows)))
    assert kept_loss < noise_loss and kept_loss < smooth_loss
    assert max(kept_rows[-1]["first_iterations"]) < 2
    assert max(kept_rows[0]["first_iterations"]) < max(smooth_rows[0]["first_iterations"]) / 2

    def drift(rows, key):
        return max(max(row[key]) for row in rows)

    assert drift(kept_rows, "drift_after") < 0.1
    assert noise_rows[0]["drift_after"][0] > 5 and drift(smooth_rows, "drift_after") > 5
    assert drift(kept_rows, "drift_first") < drift(smooth_rows, "drift_after") / 1.5
