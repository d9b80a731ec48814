"""Uniform SO(3) grids and the branch-and-bound pose search: exact recovery of on-grid poses of
noiseless projections, a bound that never exceeds the true error, the phase convention."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryoframe.algorithms.posesearch import Components, PoseSearch, Projector
from cryoframe.geometry import fourier as fo
from cryoframe.geometry.grids import level_steps, local_rotations, rotation_grid, shift_grid
from cryoframe.synthetic import make_volumes

BOX = 24


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    return make_volumes(1, BOX, seed=3)[0]


def _angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(Rotation.from_matrix(np.einsum("nji,njk->nik", a, b)).magnitude())


def test_rotation_grid_covers_so3_at_its_step() -> None:
    g = rotation_grid(15.0)
    assert abs(len(g) - 8 * np.pi ** 2 / np.radians(15.0) ** 3) / len(g) < 0.1
    assert np.allclose(np.einsum("nij,nkj->nik", g, g), np.eye(3), atol=1e-9)
    q = Rotation.random(400, random_state=0).as_matrix()
    # distance of random rotations to the nearest grid point
    tr = np.einsum("qij,gij->qg", q, g)
    nearest = np.degrees(np.arccos(np.clip((tr.max(1) - 1) / 2, -1, 1)))
    assert np.median(nearest) < 10.0 and nearest.max() < 16.0


def test_neighbourhoods_and_shift_lattice() -> None:
    d = local_rotations(7.5)
    assert d.shape == (27, 3, 3) and np.allclose(d[0], np.eye(3))
    assert np.isclose(_angles(d[1:2], np.eye(3)[None])[0], 7.5)
    s = shift_grid(4.0, 2.0)
    assert np.allclose(s[0], 0) and len(s) == 13 and np.all((s ** 2).sum(1) <= 16 + 1e-9)
    assert level_steps(15, 1.875) == [15, 7.5, 3.75, 1.875]


def test_component_phases_are_the_geometry_phase_shift() -> None:
    comps = Components(8)
    sh = np.array([[1.5, -2.25], [0.0, 3.0]])
    full = fo.phase_shift(BOX, sh)
    assert np.allclose(comps.phases(sh, BOX), comps.take(full, BOX), atol=1e-5)


def test_search_recovers_on_grid_poses_and_shifts_exactly(volume: np.ndarray) -> None:
    comps = Components(8)
    proj = Projector(volume, comps)
    ps = PoseSearch(coarse_step_deg=15.0, fine_step_deg=7.5, shift_range_px=4, shift_step_px=2, n_candidates=4)
    grid = ps.grid(15.0)
    rng = np.random.default_rng(0)
    rot = grid[rng.choice(len(grid), 40, replace=False)]
    sh = rng.choice([-2.0, 0.0, 2.0], (40, 2))
    # the particle sits at -shift: the stored shift (+shift) centres it
    f = fo.cfft2(fo.project_volume(volume, rot)) * fo.phase_shift(BOX, -sh)
    X = comps.take(f, BOX).astype(np.complex64)
    res = ps.search(proj, X, np.ones(X.shape, np.float32), (comps.mult / 2).astype(np.float32), BOX, 8)
    assert _angles(res.rot[:, 0], rot).max() < 1e-6
    assert np.abs(res.shift[:, 0] - sh).max() < 1e-9
    assert res.stats["pruned"] > 0.5 * res.stats["scored"]  # the bound discards most of the grid
    assert np.allclose(res.weight.sum(1), 1.0)


def test_search_off_grid_reaches_the_fine_step(volume: np.ndarray) -> None:
    comps = Components(10)
    proj = Projector(volume, comps)
    ps = PoseSearch(coarse_step_deg=15.0, fine_step_deg=3.75, shift_range_px=3, shift_step_px=1.5, n_candidates=4)
    rot = Rotation.random(40, random_state=2).as_matrix()
    X = comps.take(fo.cfft2(fo.project_volume(volume, rot)), BOX).astype(np.complex64)
    res = ps.search(proj, X, np.ones(X.shape, np.float32), (comps.mult / 2).astype(np.float32), BOX, 10,
                    full=True)
    err = _angles(res.rot[:, 0], rot)
    assert np.median(err) < 3.75 and np.mean(err < 7.5) >= 0.9


def test_lower_bound_never_exceeds_the_true_error(volume: np.ndarray) -> None:
    comps = Components(10)
    proj = Projector(volume, comps)
    rng = np.random.default_rng(4)
    rot = Rotation.random(6, random_state=4).as_matrix()
    f = fo.cfft2(fo.project_volume(volume, rot) + rng.normal(0, 5.0, (6, BOX, BOX)).astype(np.float32))
    X = comps.take(f, BOX).astype(np.complex64)
    C = np.ones(X.shape, np.float32)
    w = (comps.mult / 2).astype(np.float32)
    m0, m1 = comps.count(4), comps.count(10)
    cand = Rotation.random(300, random_state=5).as_matrix()
    ps = PoseSearch()
    low = ps._errors(proj, X, C, w, np.broadcast_to(cand, (6, 300, 3, 3)), np.zeros((6, 300, 2)), BOX, m0)
    full = ps._errors(proj, X, C, w, np.broadcast_to(cand, (6, 300, 3, 3)), np.zeros((6, 300, 2)), BOX, m1)
    gap = np.maximum(np.abs(X[:, m0:m1]) - proj.pmax()[None, m0:m1], 0)
    bound = low + (w[m0:m1] * gap ** 2).sum(1)[:, None]
    assert np.all(bound <= full * (1 + 1e-5))
    assert np.all(bound > low)  # with noise above the reference the high-frequency term is informative


def test_scale_marginalisation_recovers_poses_of_particles_of_other_contrast(volume: np.ndarray) -> None:
    # noiseless slices at random poses times contrasts 0.45..1.2 (synthetic data's junk-like scale mixture):
    # the plain score prefers poses of less projected power for the faint ones; with the contrast
    # marginalised out (prior N(1, 0.3^2)) every pose comes back to the fine step
    comps = Components(8)
    proj = Projector(volume, comps)
    m = len(comps)
    rot = Rotation.random(60, random_state=5).as_matrix()
    s = np.linspace(0.45, 1.2, 60)
    X = proj.slices(rot, m) * s[:, None].astype(np.float32)
    C = np.ones((60, m), np.float32)
    w = (comps.mult / 2.0).astype(np.float32)
    kw = dict(coarse_step_deg=15.0, fine_step_deg=3.75, shift_range_px=0, shift_step_px=0, n_candidates=8)
    plain = PoseSearch(**kw).search(proj, X, C, w, BOX, 8.0, full=True)
    scaled = PoseSearch(**kw, scale_prior_sd=0.3).search(proj, X, C, w, BOX, 8.0, full=True)
    e_plain, e_scaled = _angles(plain.rot[:, 0], rot), _angles(scaled.rot[:, 0], rot)
    assert np.median(e_scaled) < 3.0 and (e_scaled < 6.0).mean() > 0.9
    faint = s < 0.7
    assert np.median(e_plain[faint]) > 3 * np.median(e_scaled[faint])
    # the score: A - 2B + D without a scale; with it, the marginal is lower for a faint particle at its pose
    a, b, d = 10.0, 3.0, 9.0
    assert PoseSearch()._score(a, b, d) == pytest.approx(a - 2 * b + d)
    sc = PoseSearch(scale_prior_sd=0.3)._score(a, b, d)
    q = 1 / (2 * 0.3 ** 2)
    assert sc == pytest.approx(a + q - (b + q) ** 2 / (d + q) + 0.5 * np.log1p(d / q)) and sc < a - 2 * b + d


def test_level0_top_poses_and_in_place_score_match_the_plain_computation() -> None:
    """The level-0 selection scores and partitions only the rotations that can hold the lowest poses
    (found from each rotation's largest and smallest correlation over the shifts): it must return
    exactly the lowest poses of the whole (shift x rotation) array and their errors, lowest first,
    with and without the scale marginal (whose error is not monotone in the correlation), with the two
    extremes scored as a pair (the same floats as scoring them separately); the in-place scale-marginalised score
    must equal the formula."""
    from cryoframe.algorithms._level0 import level0_top
    from cryoframe.geometry import _kernels

    g = np.random.default_rng(3)
    for sd in (None, 0.3):
        ps = PoseSearch(scale_prior_sd=sd)
        for S, R, top in [(29, 500, 24), (1, 50, 5), (3, 10, 10), (4, 6, 24), (2, 9, 1), (3, 4, 12)]:
            t1 = g.uniform(-20, 20, (8, S, R)).astype(np.float32)  # B + q < 0 too: the marginal's other branch
            const = g.uniform(50, 60, 8).astype(np.float32)
            t2 = g.uniform(1, 9, (8, R)).astype(np.float32)
            full = ps._score(const[:, None, None], t1, t2[:, None, :]).reshape(8, -1)
            order, err = level0_top(t1, const, t2, top, ps._score_inplace(np), ps._score_extremes(np), np)
            want = np.argsort(full, 1)[:, :top]
            np.testing.assert_array_equal(order, want)
            np.testing.assert_allclose(err, np.take_along_axis(full, want, 1), rtol=1e-5, atol=1e-4)
            # the pair score of the largest and smallest correlation: the floats of the two separate scores
            hi, lo = t1.max(1), t1.min(1)
            one = ps._score_inplace(np)
            two = np.minimum(one(const[:, None], hi.copy(), t2), one(const[:, None], lo.copy(), t2))
            np.testing.assert_array_equal(ps._score_extremes(np)(const[:, None], hi.copy(), lo.copy(), t2), two)
            if _kernels.HAVE_NUMBA:  # the compiled one-pass extremes over the shifts
                hi, lo = _kernels.extremes(t1)
                np.testing.assert_array_equal(hi, t1.max(1))
                np.testing.assert_array_equal(lo, t1.min(1))
    ps = PoseSearch(scale_prior_sd=0.3)
    q = 1 / (2 * 0.3 ** 2)
    a = g.uniform(50, 60, (4, 1, 1)).astype(np.float32)
    b = g.uniform(-5, 5, (4, 3, 7)).astype(np.float32)
    d = g.uniform(1, 9, (4, 1, 7)).astype(np.float32)
    want = a + q - (b + q) ** 2 / (d + q) + 0.5 * np.log1p(d / q)
    np.testing.assert_allclose(ps._score(a, b, d), want, rtol=1e-5)
    b2 = b.copy()
    np.testing.assert_allclose(ps._score(a, b2, d, inplace=True), want, rtol=1e-5)
    np.testing.assert_allclose(b2, want, rtol=1e-5)  # overwritten with the result


def test_projector_slices_at_components_with_repeated_rotations() -> None:
    """``Projector.slices`` samples the components directly (``fourier.extract_at``) and extracts a
    repeated rotation once: it must equal the full central slices
    (``fourier.extract_slices``, both the compiled and the vectorised path) at the components, row for row."""
    from cryoframe.geometry import _kernels

    g = np.random.default_rng(5)
    vol = g.standard_normal((20, 20, 20)).astype(np.float32)
    comps = Components(8.0)
    proj = Projector(vol, comps, 2)
    base = Rotation.random(700, random_state=2).as_matrix()
    rot = base[g.integers(0, 700, 2000)]  # most rows repeat one of 700 rotations
    m = comps.count(6.5)
    got = proj.slices(rot, m)
    assert got.shape == (2000, m) and got.dtype == np.complex64
    idx = comps.flat(20)[:m]
    for method in ("numba", "xp") if _kernels.HAVE_NUMBA else ("xp",):
        full = fo.extract_slices(proj.vft, rot, 20, 2, float(comps.radius[m - 1]), method=method)
        np.testing.assert_allclose(got, full.reshape(2000, -1)[:, idx], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(proj.slices(base, m), proj.slices(base[::-1], m)[::-1])  # no repeats
    for threads in (2, 3):  # parts of the rotations in threads: the same slices, in order
        np.testing.assert_array_equal(proj.slices(rot, m, threads=threads), got)
        np.testing.assert_array_equal(proj.slices(base, m, chunk=300, threads=threads), proj.slices(base, m))


@pytest.mark.parametrize("scale", [None, 0.3])
def test_threaded_search_is_the_serial_search(volume: np.ndarray, scale: float | None) -> None:
    """Blocks searched in threads (BLAS at one thread each) give the serial search's poses, shifts,
    errors and counts exactly, with and without the bound (the scale marginal turns it off)."""
    comps = Components(8)
    proj = Projector(volume, comps)
    rot = Rotation.random(45, random_state=5).as_matrix()
    rng = np.random.default_rng(1)
    f = fo.cfft2(fo.project_volume(volume, rot) + rng.normal(0, 2.0, (45, BOX, BOX)))
    X = comps.take(f, BOX).astype(np.complex64)
    C = np.ones(X.shape, np.float32)
    w = (comps.mult / 2).astype(np.float32)
    out = []
    for threads in (1, 2, 3):
        ps = PoseSearch(coarse_step_deg=15.0, fine_step_deg=7.5, shift_range_px=2, shift_step_px=2, n_candidates=3,
                        chunk=8, n_threads=threads, scale_prior_sd=scale)
        out.append(ps.search(proj, X, C, w, BOX, 8))
    for res in out[1:]:
        assert np.array_equal(res.rot, out[0].rot) and np.array_equal(res.shift, out[0].shift)
        assert np.array_equal(res.error, out[0].error) and res.stats == out[0].stats
    assert out[0].stats["scored"] > 0 and (scale is not None or out[0].stats["pruned"] > 0)


@pytest.mark.parametrize(("n", "chunk", "threads", "sizes"),
                         [(300, 64, 2, [50] * 6), (300, 64, 1, [60] * 5), (10, 64, 2, [10]), (129, 64, 3, [43] * 3),
                          (1, 8, 2, [1])])
def test_search_blocks_split_evenly_over_the_threads(n: int, chunk: int, threads: int, sizes: list[int]) -> None:
    ps = PoseSearch(chunk=chunk, n_threads=threads)
    blocks = ps._chunks(n, np)
    assert [b.stop - b.start for b in blocks] == sizes
    assert blocks[0].start == 0 and blocks[-1].stop == n
    assert all(a.stop == b.start for a, b in zip(blocks[:-1], blocks[1:], strict=True))


@pytest.mark.parametrize("scale", [None, 0.3])
def test_in_plane_pairs_give_the_whole_grids_search(volume: np.ndarray, scale: float | None,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Level 0 over a grid whose in-plane angles pair up by 180 degrees scores half the rotations and
    takes the other half's correlations from the conjugate slices (``U - V``): the same poses, shifts
    and (to float32 rounding) errors as scoring every rotation's own slice, with and without the bound;
    a grid with an odd number of in-plane angles (11 deg: 33) has no pairs."""
    from cryoframe.algorithms import _level0
    from cryoframe.geometry import _kernels

    comps = Components(8)
    proj = Projector(volume, comps)
    rot = Rotation.random(40, random_state=7).as_matrix()
    rng = np.random.default_rng(2)
    f = fo.cfft2(fo.project_volume(volume, rot) + rng.normal(0, 1.0, (40, BOX, BOX))) * fo.phase_shift(
        BOX, rng.uniform(-2, 2, (40, 2)))
    X = comps.take(f, BOX).astype(np.complex64)
    C = np.ones(X.shape, np.float32)
    w = (comps.mult / 2).astype(np.float32)
    ps = PoseSearch(coarse_step_deg=15.0, fine_step_deg=7.5, shift_range_px=4, shift_step_px=2, n_candidates=4,
                    scale_prior_sd=scale)
    assert ps._psi_half(15.0) == 12 and PoseSearch()._psi_half(11.0) == 0
    paired = ps.search(proj, X, C, w, BOX, 8)
    monkeypatch.setattr(PoseSearch, "_psi_half", lambda self, step: 0)
    whole = ps.search(proj, X, C, w, BOX, 8)
    assert np.array_equal(paired.rot, whole.rot) and np.array_equal(paired.shift, whole.shift)
    np.testing.assert_allclose(paired.error, whole.error, rtol=1e-5)
    assert np.median(_angles(paired.rot[:, 0], rot)) < 7.5
    # the pairs' extremes over the shifts: the floats of u + v and u - v, laid out as the grid
    u, v = (rng.normal(0, 5, (3, 7, 5, 4)).astype(np.float32) for _ in range(2))
    t = _level0.PsiPairs(u, v)
    full = np.stack([u + v, u - v], 3).reshape(3, 7, 40)
    np.testing.assert_array_equal(t.full(), full)
    hi, lo = t.extremes()
    np.testing.assert_array_equal(hi, full.max(1))
    np.testing.assert_array_equal(lo, full.min(1))
    if _kernels.HAVE_NUMBA:
        hi, lo = _kernels.extremes_pairs(u, v)
        np.testing.assert_array_equal(hi.reshape(3, 40), full.max(1))
        into = (np.empty((3, 40), np.float32), np.empty((3, 40), np.float32))
        assert _kernels.extremes_pairs(u, v, out=into) is into
        np.testing.assert_array_equal(into[0], full.max(1))
        np.testing.assert_array_equal(into[1], full.min(1))
    r = rng.integers(0, 40, (3, 6))
    np.testing.assert_array_equal(t.take(r), np.take_along_axis(full, r[:, None, :], 2))
