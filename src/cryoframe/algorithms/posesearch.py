"""Coarse-to-fine pose search over SO(3) x shifts with branch-and-bound pruning (cryoSPARC's BnB,
Punjani et al. 2017), for ab-initio reconstruction and later refinements.

Data model (all in Fourier space, per particle, at the integer frequencies ``(kx, ky)`` cycles per
box within a radius, :class:`Components`, sorted by radius so a lower resolution is a prefix):

* ``X`` (n, m) complex: the particle images' transforms (:func:`cryoframe.geometry.fourier.cfft2`);
* ``C`` (n, m) real: their CTFs; ``w`` (m,) the noise weights ``mult / (2 sigma^2)`` with ``mult`` 2
  for kx > 0 and 1 on the kx = 0 column (each Hermitian pair once), ``sigma^2 = E|noise_k|^2``;
* the error of a pose (rotation ``R``, shift ``t``) against a reference ``V``:
  ``E = sum_k w_k |X_k T_k(t) - C_k P_k(R)|^2`` with ``P(R)`` the central slice of ``V``
  (:func:`cryoframe.geometry.fourier.extract_slices`) and ``T(t)`` the phase factor translating the
  image by ``t`` px (the stored shift: the translation that centres the particle); the
  log-likelihood is ``-E`` up to a per-particle constant.

Search (:class:`PoseSearch`): level 0 scores every rotation of a uniform grid
(:func:`cryoframe.geometry.grids.rotation_grid`) times every shift of a lattice at the low radius
``r_0`` as two matrix products (particles x shifts by rotations over the components; over half the
rotations when the grid's in-plane angles pair up by 180 degrees, :mod:`cryoframe.algorithms._level0`).  Branch and
bound: for each particle the pose with the lowest low-resolution error gets its exact error up to
the next level's radius ``r_1``; any pose whose lower bound — its low-resolution error plus a bound
on the error between ``r_0`` and ``r_1`` that holds for every pose,
``sum_k w_k max(0, |X_k| - |C_k| Pmax_k)^2`` with ``Pmax_k`` the largest modulus of the reference
near radius ``|k|`` — exceeds that error cannot be the best pose and is pruned with its branches.
Of the survivors at most ``n_candidates`` (lowest bound first) are branched: each into its
neighbourhood at half the angular step (:func:`cryoframe.geometry.grids.local_rotations`) and a
3 x 3 shift neighbourhood at half the shift step, scored at the next radius; this repeats until the
finest step.  The final candidates carry posterior weights ``softmax(-E)`` (per particle).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from cryoframe.algorithms._level0 import PsiPairs, level0_top, pair_products, psi_half
from cryoframe.backend import available_cores, blas_threads, thread_map, to_host
from cryoframe.geometry import fourier as fo
from cryoframe.geometry.grids import inplane_count, level_steps, local_rotations, rotation_grid, shift_grid

__all__ = ["Components", "PoseSearch", "Projector", "SearchResult"]


class Components:
    """The half-plane Fourier components within ``r_max`` (cycles per box), sorted by radius, without
    the origin.

    ``kx``, ``ky`` (m,) integers, ``radius`` (m,), ``mult`` (m,) 2 for kx > 0 else 1.  The same list
    indexes transforms of any box larger than ``2 r_max`` (:meth:`flat`): a Fourier-cropped working
    box and the full box share frequencies (cycles per box) when the pixel size scales with the box.
    The origin (DC, the image mean) is left out, as RELION's probability calculation does ("Exclude
    origin (ires==0) from the Probability-calculation. This way we are invariant to additive factors",
    ``src/ml_optimiser.cpp``, 3dem/relion 73f0a3c) and this package's 2D/3D classification: it holds no
    pose information, and particles that were not normalised to a zero background (raw counts, another
    program's extraction) carry an arbitrary offset there that would swamp the low-resolution scores
    and, inserted, the volumes.
    """

    def __init__(self, r_max: float) -> None:
        b = 2 * int(math.ceil(r_max)) + 2
        kx, ky, _ = fo.image_freqs(b, r_max)
        dc = (kx == 0) & (ky == 0)
        kx, ky = kx[~dc], ky[~dc]
        r = np.hypot(kx, ky)
        order = np.lexsort((kx, ky, r))
        self.r_max = float(r_max)
        self.kx = kx[order].astype(np.int64)
        self.ky = ky[order].astype(np.int64)
        self.radius = r[order]
        self.mult = np.where(self.kx > 0, 2.0, 1.0)

    def __len__(self) -> int:
        return len(self.kx)

    def count(self, r: float) -> int:
        """Number of components within radius ``r`` (a prefix of the list)."""
        return int(np.searchsorted(self.radius, r + 1e-9, side="right"))

    def flat(self, box: int) -> np.ndarray:
        """Indices of the components in a raveled ``(box, box // 2 + 1)`` half-plane transform."""
        if box < 2 * self.r_max:
            raise ValueError(f"box {box} is too small for radius {self.r_max}")
        return (self.ky % box) * (box // 2 + 1) + self.kx

    def take(self, f: Any, box: int, xp: ModuleType = np) -> Any:
        """The components (n, m) of half-plane transforms ``f`` (n, box, box // 2 + 1)."""
        return f.reshape(f.shape[0], -1)[:, xp.asarray(self.flat(box))]

    def scatter(self, values: Any, box: int, xp: ModuleType = np) -> Any:
        """Half-plane arrays (n, box, box // 2 + 1) holding ``values`` (n, m) at the components (0 elsewhere)."""
        out = xp.zeros((values.shape[0], box * (box // 2 + 1)), dtype=values.dtype)
        out[:, xp.asarray(self.flat(box)[:values.shape[1]])] = values
        return out.reshape(values.shape[0], box, box // 2 + 1)

    def phases(self, shifts: Any, box: int, m: int | None = None, xp: ModuleType = np) -> Any:
        """Factors (..., m) complex64 translating images of ``box`` px by ``shifts`` (..., 2) px (x, y):
        :func:`cryoframe.geometry.fourier.phase_shift` at the components."""
        m = len(self) if m is None else m
        flat = np.asarray(to_host(shifts), dtype=np.float64).reshape(-1, 2)
        first, inv = _distinct(flat[:, 0] + 1j * flat[:, 1], flat)
        if 2 * len(first) <= len(flat):  # candidates on a lattice: each distinct shift's factors once
            return self.phases(flat[first], box, m, xp)[xp.asarray(inv)].reshape(*np.shape(shifts)[:-1], m)
        s = xp.asarray(flat.reshape(np.shape(shifts)))
        kx = xp.asarray(self.kx[:m], dtype=xp.float64)
        ky = xp.asarray(self.ky[:m], dtype=xp.float64)
        ph = (-2.0 * math.pi / box) * (s[..., 0, None] * kx + s[..., 1, None] * ky)
        return (xp.cos(ph) + 1j * xp.sin(ph)).astype(xp.complex64)


class Projector:
    """Central slices of a volume at the :class:`Components`.

    ``vol`` (b, b, b) ``[z, y, x]`` real on a box ``b > 2 r_max`` (e.g. a Fourier-cropped working
    box); its slices are in the units of the transforms of that box's projections.
    """

    def __init__(self, vol: Any, comps: Components, pad: int = 2, xp: ModuleType = np) -> None:
        self.box = int(vol.shape[0])
        self.comps = comps
        self.pad = pad
        self.xp = xp
        self.vft = fo.volume_transform(xp.asarray(vol), pad, xp)
        comps.flat(self.box)  # raises when the box cannot hold the components
        self._pmax: np.ndarray | None = None

    def slices(self, rot: np.ndarray, m: int, chunk: int = 8192, threads: int = 1) -> Any:
        """Slices (n, m) complex64 at pose matrices ``rot`` (n, 3, 3), components ``0 .. m - 1``.
        A rotation repeated in ``rot`` is extracted once (the candidates of a search share rotations
        across their shifts: a level's shift neighbourhood repeats each of them 9 times).  On the CPU
        ``threads`` threads extract parts of the rotations (the compiled loop releases the GIL)."""
        rows = np.ascontiguousarray(to_host(rot), dtype=np.float64).reshape(-1, 9)
        first, inv = _distinct(rows @ _KEY9, rows)
        if 4 * len(first) <= 3 * len(rows):
            return self._slices(rows[first].reshape(-1, 3, 3), m, chunk, threads)[self.xp.asarray(inv)]
        return self._slices(rows.reshape(-1, 3, 3), m, chunk, threads)

    def _slices(self, rot: np.ndarray, m: int, chunk: int, threads: int) -> Any:
        xp = self.xp
        kx, ky = self.comps.kx[:m], self.comps.ky[:m]
        threads = threads if xp is np else 1
        if threads > 1:  # parts of at least 256 rotations, one or more per thread
            chunk = max(256, min(chunk, -(-len(rot) // threads)))
        out = thread_map(lambda r: fo.extract_at(self.vft, xp.asarray(r) if xp is not np else r, kx, ky, self.pad, xp),
                         [rot[s:s + chunk] for s in range(0, len(rot), chunk)], threads)
        return xp.concatenate(out) if out else xp.zeros((0, m), dtype=xp.complex64)

    def pmax(self) -> np.ndarray:
        """Upper bound (m,) of ``|P_k|`` over all rotations: the largest modulus of the padded
        transform within one voxel of the component's radius (trilinear values are convex
        combinations of their corners)."""
        if self._pmax is None:
            from cryoframe.geometry.fsc import shell_index

            sh = to_host(shell_index(self.box, 3, self.pad, self.xp)).ravel()
            a = to_host(self.xp.abs(self.vft)).ravel()
            ns = int(sh.max()) + 2
            smax = np.zeros(ns + 2)
            np.maximum.at(smax, sh, a)
            r = self.comps.radius
            lo = np.maximum(np.floor(r).astype(int) - 1, 0)
            cand = np.stack([smax[np.minimum(lo + j, ns + 1)] for j in range(4)])
            self._pmax = cand.max(0)
        return self._pmax


@dataclass(frozen=True)
class _Level0:
    """What every block of one :meth:`PoseSearch.search` shares: the reference, the particles' data and
    weights, the level-0 grid, shift lattice and slice products, and the levels' steps and radii."""

    proj: Projector
    X: Any
    C: Any
    wf: Any
    prior_shift: np.ndarray | None
    sgrid: np.ndarray
    ph_grid: Any
    P0ri: tuple[Any, ...]  # ((2 m0, R) real and imaginary parts,), or (Re, Im) (m0, R / 2) of the in-plane pairs' first halves
    P0a: Any
    grid: np.ndarray
    pmax: Any
    steps: list[float]
    ms: list[int]
    sstep: float
    box: int
    T: int
    m_full: int
    half: int  # psi pairs' half count (PoseSearch._psi_half), 0: the whole grid's slices


@dataclass
class SearchResult:
    """Result of :meth:`PoseSearch.search` for n particles and T candidates each.

    ``rot`` (n, T, 3, 3) pose matrices, ``shift`` (n, T, 2) px, ``error`` (n, T) (lowest first),
    ``weight`` (n, T) posterior weights summing to 1, ``stats``: counts of scored and pruned poses.
    """

    rot: np.ndarray
    shift: np.ndarray
    error: np.ndarray
    weight: np.ndarray
    stats: dict[str, float]

    def top(self, T: int) -> SearchResult:
        """The ``T`` best candidates (copies), their posterior weights renormalised over them."""
        T = min(T, self.rot.shape[1])
        err = self.error[:, :T].copy()
        return SearchResult(self.rot[:, :T].copy(), self.shift[:, :T].copy(), err, _posterior(err), dict(self.stats))

    @property
    def log_evidence(self) -> np.ndarray:
        """``log sum_T exp(-E)`` per particle (n,): the class evidence over the candidates."""
        e = -self.error
        mx = e.max(1)
        return mx + np.log(np.exp(e - mx[:, None]).sum(1))


class PoseSearch:
    """Branch-and-bound pose search (see the module docstring).

    Parameters
    ----------
    coarse_step_deg, fine_step_deg : angular step (deg) of the exhaustive level and the finest level.
    shift_range_px, shift_step_px : shift search disc radius and lattice step (px of the images) at
        level 0; each further level searches a 3 x 3 neighbourhood at half the step.
    n_candidates : poses branched per particle between levels (lowest lower bound first).
    coarse_radius : component radius (cycles per box) of level 0; None: ``1.6 / step`` (rad),
        capped by the search radius.  Level ``l`` uses twice the radius of level ``l - 1``.
    bound : apply the branch-and-bound pruning at level 0 (else keep the best ``n_candidates``).
    chunk : particles per vectorised block.
    n_threads : on the CPU, blocks searched side by side in threads with the BLAS at one thread
        (None: every available core).  The matrix products scale either way, the element-wise
        scoring, the selections and the compiled slice extraction run in one thread per block.  The
        BLAS stays at one thread with ``n_threads=1`` too: OpenBLAS rounds a product differently
        with more threads, and the result must not depend on the machine's cores.
    scale_prior_sd : None scores ``E`` as above (the reference at the particle's contrast).  A
        number ``sd`` marginalises a per-particle contrast scale ``s ~ N(1, sd^2)`` out of each
        pose's score: with ``A = sum w |X T|^2``, ``B = sum w C Re(conj(X T) P)``, ``D = sum w C^2 |P|^2``
        and ``q = 1 / (2 sd^2)``, ``E = A + q - (B + q)^2 / (D + q) + log(1 + D / q) / 2`` (the
        negative log of ``int exp(-E(s)) N(s; 1, sd^2) ds`` up to a constant).  Particles whose
        contrast differs from the reference's then no longer prefer the poses of least projected
        power.  The bound is not additive over components then: no pruning.
    """

    def __init__(self, *, coarse_step_deg: float = 15.0, fine_step_deg: float = 1.875, shift_range_px: float = 6.0,
                 shift_step_px: float = 2.0, n_candidates: int = 8, coarse_radius: float | None = None,
                 bound: bool = True, chunk: int = 64, scale_prior_sd: float | None = None,
                 n_threads: int | None = None) -> None:
        self.coarse_step_deg = coarse_step_deg
        self.fine_step_deg = fine_step_deg
        self.shift_range_px = shift_range_px
        self.shift_step_px = shift_step_px
        self.n_candidates = n_candidates
        self.coarse_radius = coarse_radius
        self.bound = bound
        self.chunk = chunk
        self.scale_prior_sd = scale_prior_sd
        self.n_threads = n_threads
        self._grid: dict[float, np.ndarray] = {}
        self._halves: dict[float, int] = {}

    def _score(self, a: Any, b: Any, d: Any, xp: ModuleType = np, inplace: bool = False) -> Any:
        """The pose score from ``A``, ``B``, ``D`` (see the class docstring), broadcast.  ``inplace``:
        ``b`` has the result's shape and dtype and is overwritten with it (the big level-0 array,
        scored without temporaries)."""
        if self.scale_prior_sd is None:
            return a - 2.0 * b + d
        q = 1.0 / (2.0 * float(self.scale_prior_sd) ** 2)
        dq, c = self._marginal_terms(a, d, q, xp)
        if not inplace:
            return c - (b + q) ** 2 / dq
        b += q
        xp.square(b, out=b)
        b /= dq
        return xp.subtract(c, b, out=b)

    @staticmethod
    def _marginal_terms(a: Any, d: Any, q: float, xp: ModuleType) -> tuple[Any, Any]:
        """``D + q`` and the terms of the scale-marginalised score that do not depend on ``B``:
        ``A + q + log1p(D / q) / 2``, with ``log1p(D / q) = log(D + q) - log(q)`` (NumPy's float32
        ``log`` is vectorised, its ``log1p`` is not: 0.5 ms against 5.1 ms on (64, 4392); the scores took 13%
        of a profile of ab-initio SGD iterations; the difference is below the score's float32 resolution,
        ``D >= 0``)."""
        dq = d + q
        return dq, a + (q - 0.5 * math.log(q)) + 0.5 * xp.log(dq)

    def _score_inplace(self, xp: ModuleType) -> Any:
        """``score(a, b, d)`` of :meth:`_score` that may overwrite ``b`` (a temporary of the caller)."""
        return lambda a, b, d: self._score(a, b, d, xp, inplace=True)

    def _score_extremes(self, xp: ModuleType) -> Any:
        """``score(a, hi, lo, d)``: the lower of :meth:`_score` at ``B = hi`` and at ``B = lo`` (the
        same floats), overwriting ``hi`` and ``lo``.  The score falls with ``B`` (no scale) or with
        ``(B + q)^2`` (scale marginal) and rounding is monotone, so the pair costs one score's
        passes (the terms without ``B`` are computed once)."""
        def score(a: Any, hi: Any, lo: Any, d: Any) -> Any:
            if self.scale_prior_sd is None:
                return a - 2.0 * hi + d
            q = 1.0 / (2.0 * float(self.scale_prior_sd) ** 2)
            dq, c = self._marginal_terms(a, d, q, xp)
            hi += q
            xp.square(hi, out=hi)
            lo += q
            xp.square(lo, out=lo)
            xp.maximum(hi, lo, out=hi)
            hi /= dq
            return xp.subtract(c, hi, out=hi)
        return score

    def grid(self, step_deg: float) -> np.ndarray:
        """The level-0 rotation grid (cached)."""
        if step_deg not in self._grid:
            self._grid[step_deg] = rotation_grid(step_deg)
        return self._grid[step_deg]

    def _psi_half(self, step_deg: float) -> int:
        """Half the in-plane angles of the level-0 grid when they pair up by 180 degrees (an even
        number), else 0 (:func:`cryoframe.algorithms._level0.psi_half`)."""
        if step_deg not in self._halves:
            self._halves[step_deg] = psi_half(self.grid(step_deg), inplane_count(step_deg))
        return self._halves[step_deg]

    def shift_step(self, box: int, r0: float) -> float:
        """Level-0 shift lattice step (px): ``shift_step_px`` divided by the smallest integer that
        makes it at most ``box / (4 r0)``, a quarter period of the highest level-0 frequency."""
        limit = box / (4.0 * max(r0, 1.0))
        return self.shift_step_px / max(1, math.ceil(self.shift_step_px / limit - 1e-9))

    def levels(self, r_max: float, full: bool = False) -> tuple[list[float], list[float]]:
        """Angular steps (deg) and component radii (cycles per box) of the levels searched up to
        ``r_max``.  A level is only added while the previous one was below ``r_max`` (a finer grid
        gains nothing without finer frequencies) unless ``full``: then down to ``fine_step_deg``."""
        steps = level_steps(self.coarse_step_deg, self.fine_step_deg)
        r0 = self.coarse_radius or 1.6 / math.radians(self.coarse_step_deg)
        radii = [min(r_max, max(2.0, r0 * 2 ** i)) for i in range(len(steps))]
        if not full:
            n = 1
            while n < len(steps) and r0 * 2 ** (n - 1) < r_max:
                n += 1
            steps, radii = steps[:n], radii[:n]
        return steps, radii

    def search(self, proj: Projector, X: Any, C: Any, w: Any, box: int, r_max: float,
               prior_shift: np.ndarray | None = None, full: bool = False) -> SearchResult:
        """Search poses of particles ``X`` (n, m), CTF ``C`` (n, m), weights ``w`` (m,) against
        ``proj`` up to radius ``r_max`` (cycles per box; images of ``box`` px).

        ``prior_shift`` (n, 2) px centres each particle's shift lattice (default 0); ``full``: refine
        down to ``fine_step_deg`` whatever the radius (see :meth:`levels`).
        """
        xp = proj.xp
        comps = proj.comps
        n = X.shape[0]
        steps, radii = self.levels(r_max, full)
        ms = [comps.count(r) for r in radii]
        grid = self.grid(steps[0])
        sstep = self.shift_step(box, radii[0])
        sgrid = shift_grid(self.shift_range_px, sstep)
        m0 = ms[0]
        h = self._psi_half(steps[0])
        if h:  # the slices of the pairs' first halves (see cryoframe.algorithms._level0)
            P0 = proj.slices(grid.reshape(-1, 2, h, 3, 3)[:, 0].reshape(-1, 3, 3), m0, threads=self._threads(xp))
            P0ri: tuple[Any, ...] = (xp.ascontiguousarray(P0.real.T), xp.ascontiguousarray(P0.imag.T))
        else:
            P0 = proj.slices(grid, m0, threads=self._threads(xp))
            P0ri = (xp.concatenate([P0.real.T, P0.imag.T], 0),)  # (2 m0, R): one real product for Re(conj(a) P)
        P0a = (xp.abs(P0) ** 2).T.copy()
        T = max(1, self.n_candidates)
        out_rot = np.empty((n, T, 3, 3))
        out_sh = np.empty((n, T, 2))
        out_err = np.empty((n, T))
        pmax = xp.asarray(proj.pmax()) if self.bound and len(ms) > 1 and self.scale_prior_sd is None else None
        wf = xp.asarray(w, dtype=xp.float32)
        ph_grid = comps.phases(sgrid, box, m0, xp)[None] if prior_shift is None else None  # the same for every particle
        ctx = _Level0(proj, X, C, wf, prior_shift, sgrid, ph_grid, P0ri, P0a, grid, pmax, steps, ms, sstep, box, T,
                      comps.count(r_max), h)
        chunks = self._chunks(n, xp)
        stats = {"scored": 0.0, "pruned": 0.0, "bound_checked": 0.0}
        for sl, (rot, sh, err, st) in zip(chunks, self._map_chunks(xp, chunks, ctx), strict=True):
            out_rot[sl], out_sh[sl], out_err[sl] = rot, sh, err
            for key, v in st.items():
                stats[key] += v
        o = np.argsort(out_err, axis=1)
        out_rot = np.take_along_axis(out_rot, o[..., None, None], 1)
        out_sh = np.take_along_axis(out_sh, o[..., None], 1)
        out_err = np.take_along_axis(out_err, o, 1)
        return SearchResult(out_rot, out_sh, out_err, _posterior(out_err), stats)

    def _threads(self, xp: ModuleType) -> int:
        """Threads the blocks run in: ``n_threads`` or every available core on the CPU, 1 on the GPU."""
        return 1 if xp is not np else max(1, self.n_threads or available_cores())

    def _chunks(self, n: int, xp: ModuleType) -> list[slice]:
        """Blocks of at most ``chunk`` particles, as many as a multiple of the threads and of equal
        size (300 particles in 2 threads: 6 blocks of 50, not 5 of 64 of which one thread runs 3)."""
        k = -(-n // self.chunk)
        t = self._threads(xp)
        k = -(-k // t) * t if k > 1 else k
        edges = np.linspace(0, n, k + 1).round().astype(int)
        return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]

    def _map_chunks(self, xp: ModuleType, chunks: list[slice], ctx: _Level0) -> Any:
        """:meth:`_search_chunk` of every chunk, in order: on the CPU in ``n_threads`` threads with
        the BLAS at one thread (with ``n_threads=1`` too), on the GPU one after the other."""
        if xp is not np:
            return [self._search_chunk(sl, ctx) for sl in chunks]
        # one BLAS thread also when the blocks run one after the other: a product's rounding depends on
        # the BLAS's thread count (OpenBLAS), and a fit must not depend on the cores of the machine
        with blas_threads(1):
            return thread_map(lambda sl: self._search_chunk(sl, ctx), chunks, self._threads(xp))

    def _search_chunk(self, sl: slice, ctx: _Level0) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, float]]:
        """Level 0, the pruning and the refinement levels of the particles ``sl``: their candidate
        rotations, shifts, errors and the counts of scored and pruned poses."""
        proj, wf, sgrid, grid, pmax, steps, ms, sstep, box, T = (ctx.proj, ctx.wf, ctx.sgrid, ctx.grid, ctx.pmax,
                                                                 ctx.steps, ctx.ms, ctx.sstep, ctx.box, ctx.T)
        xp, comps = proj.xp, proj.comps
        stats = {"scored": 0.0, "pruned": 0.0, "bound_checked": 0.0}
        m0 = ms[0]
        x, c = ctx.X[sl], ctx.C[sl]
        nb = x.shape[0]
        base = np.zeros((nb, 2)) if ctx.prior_shift is None else np.asarray(ctx.prior_shift[sl], dtype=np.float64)
        shifts = base[:, None, :] + sgrid[None]  # (nb, S, 2)
        S = shifts.shape[1]
        ph = comps.phases(shifts, box, m0, xp) if ctx.ph_grid is None else ctx.ph_grid  # (nb or 1, S, m0)
        xs = x[:, None, :m0] * ph
        a = (wf[:m0] * c[:, :m0])[:, None, :] * xs  # (nb, S, m0)
        t2 = (wf[:m0] * c[:, :m0] ** 2) @ ctx.P0a  # (nb, R), or (nb, R / 2) of the pairs' first halves
        h = ctx.half
        if h:  # in-plane pairs: U and V over half the rotations; D is the same for both of a pair
            t1: Any = pair_products(a, ctx.P0ri[0], ctx.P0ri[1], h, xp)
            t2 = xp.broadcast_to(t2.reshape(nb, -1, 1, h), (nb, t2.shape[1] // h, 2, h)).reshape(nb, -1)
        else:
            # one contiguous (nb S, 2 m0) operand: two products of the strided real and imaginary views
            # and their sum took 3x as long (29 shifts, 4,392 rotations)
            t1 = (xp.concatenate([a.real, a.imag], -1).reshape(nb * S, 2 * m0) @ ctx.P0ri[0]).reshape(nb, S, -1)
        const = (wf[:m0] * xp.abs(x[:, :m0]) ** 2).sum(1)
        R = t1.shape[2]
        stats["scored"] += nb * S * R
        keep, err = level0_top(t1, const, t2, min(T, S * R), self._score_inplace(xp), self._score_extremes(xp), xp)
        if pmax is not None:
            t1 = t1.full(xp) if isinstance(t1, PsiPairs) else t1
            keep = self._prune(proj, x, c, wf, t1, const, t2, keep, err, shifts, grid, box, ms[0], ms[1], pmax, stats)
            err = np.where(keep >= 0, err, np.inf)
        si, ri = keep // R, keep % R
        rot = grid[np.maximum(ri, 0)]
        sh = np.take_along_axis(shifts, np.maximum(si, 0)[..., None], axis=1)
        for lvl in range(1, len(steps)):
            rot, sh, err = self._refine(proj, x, c, wf, rot, sh, err, box, ms[lvl], steps[lvl], sstep / 2 ** lvl, T,
                                        stats)
        if len(steps) == 1 and m0 < ctx.m_full:
            err = self._errors(proj, x, c, wf, rot, sh, box, ctx.m_full)
        return rot, sh, err, stats

    def _errors(self, proj: Projector, x: Any, c: Any, wf: Any, rot: np.ndarray, sh: np.ndarray, box: int,
                m: int) -> np.ndarray:
        """Exact errors (nb, q) of candidate poses ``rot`` (nb, q, 3, 3), ``sh`` (nb, q, 2) at ``m`` components."""
        xp = proj.xp
        nb, q = rot.shape[:2]
        P = proj.slices(rot.reshape(-1, 3, 3), m).reshape(nb, q, m)
        ph = proj.comps.phases(sh, box, m, xp)
        if self.scale_prior_sd is None:
            r = x[:, None, :m] * ph - c[:, None, :m] * P
            return to_host((wf[:m] * (r.real ** 2 + r.imag ** 2)).sum(-1)).astype(np.float64)
        xs = x[:, None, :m] * ph
        cw = wf[:m] * c[:, None, :m]
        a = (wf[:m] * (x[:, :m].real ** 2 + x[:, :m].imag ** 2)).sum(-1)[:, None]
        b = (cw * (xs.real * P.real + xs.imag * P.imag)).sum(-1)
        d = (cw * c[:, None, :m] * (P.real ** 2 + P.imag ** 2)).sum(-1)
        return to_host(self._score(a.astype(xp.float64), b.astype(xp.float64), d.astype(xp.float64), xp)).astype(np.float64)

    def _prune(self, proj: Projector, x: Any, c: Any, wf: Any, t1: Any, const: Any, t2: Any, order: np.ndarray,
               e_order: np.ndarray, shifts: np.ndarray, grid: np.ndarray, box: int, m0: int, m1: int, pmax: Any,
               stats: dict[str, float]) -> np.ndarray:
        """Branch-and-bound at level 0: of the lowest poses ``order`` (nb, T) (errors ``e_order``), the flat
        pose indices to branch (-1 = pruned).  ``t1``, ``const``, ``t2``: the level-0 terms of every
        pose (for the count of pruned poses)."""
        xp = proj.xp
        nb, S = shifts.shape[:2]
        best = order[:, 0]
        R = len(grid)
        rot = grid[best % R][:, None]
        sh = np.take_along_axis(shifts, (best // R)[:, None, None], axis=1)
        e_best = self._errors(proj, x, c, wf, rot, sh, box, m1)[:, 0]
        hi = slice(m0, m1)
        gap = xp.maximum(xp.abs(x[:, hi]) - xp.abs(c[:, hi]) * pmax[None, hi], 0.0)
        bound_hi = to_host((wf[hi] * gap ** 2).sum(1)).astype(np.float64)
        limit = (e_best + 1e-6 * np.abs(e_best) - bound_hi)[:, None]  # a pose whose error exceeds it is pruned
        e_all = to_host(self._score(const[:, None, None], t1, t2[:, None, :], xp)).reshape(nb, -1)
        stats["bound_checked"] += nb
        stats["pruned"] += float((e_all > limit).sum())
        ok = e_order <= limit
        ok[:, 0] = True  # the best lower bound always survives
        return np.where(ok, order, -1)

    def _refine(self, proj: Projector, x: Any, c: Any, wf: Any, rot: np.ndarray, sh: np.ndarray, err: np.ndarray,
                box: int, m: int, step_deg: float, shift_step: float, T: int,
                stats: dict[str, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One level: branch live candidates into rotation neighbourhoods, keep the best T, then
        branch those into shift neighbourhoods, keep the best T."""
        nb = rot.shape[0]
        live = np.isfinite(err)
        nbh = local_rotations(step_deg)
        q = len(nbh)
        cand = np.einsum("ntij,qjk->ntqik", rot, nbh).reshape(nb, -1, 3, 3)
        csh = np.repeat(sh, q, axis=1)
        e = self._errors(proj, x, c, wf, cand, csh, box, m)
        e[~np.repeat(live, q, axis=1)] = np.inf
        stats["scored"] += float(np.isfinite(e).sum())
        rot, sh, err = _best(cand, csh, e, T)
        ds = shift_grid(shift_step * 1.5, shift_step)[:9]
        cand = np.repeat(rot, len(ds), axis=1)
        csh = (sh[:, :, None, :] + ds[None, None]).reshape(nb, -1, 2)
        e = self._errors(proj, x, c, wf, cand, csh, box, m)
        e[~np.isfinite(np.repeat(err, len(ds), axis=1))] = np.inf
        stats["scored"] += float(np.isfinite(e).sum())
        return _best(cand, csh, e, T)


_KEY9 = np.sqrt(np.array([2.0, 3.0, 5.0, 7.0, 11.0, 13.0, 17.0, 19.0, 23.0]))


def _distinct(key: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of ``rows`` (n, d) found through a 1-D ``key`` (n,) (a sort of n numbers instead
    of a sort of rows): the index of each distinct row's first occurrence and each row's index among
    them (``rows[first][inv] == rows``).  Rows of equal key that differ (a collision) fall back to
    every row distinct."""
    _, first, inv = np.unique(key, return_index=True, return_inverse=True)
    inv = inv.ravel()
    if not np.array_equal(rows[first][inv], rows):
        return np.arange(len(rows)), np.arange(len(rows))
    return first, inv


def _posterior(err: np.ndarray) -> np.ndarray:
    """Posterior weights ``softmax(-E)`` (n, T) of candidate errors ``err`` sorted lowest first."""
    wts = np.exp(-(err - err[:, :1]))
    return wts / wts.sum(1, keepdims=True)


def _best(rot: np.ndarray, sh: np.ndarray, e: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The T lowest-error candidates per particle, pose duplicates collapsed."""
    o = np.argsort(e, axis=1)[:, :T]
    return (np.take_along_axis(rot, o[..., None, None], 1), np.take_along_axis(sh, o[..., None], 1),
            np.take_along_axis(e, o, 1))
