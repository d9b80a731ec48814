"""Deterministic synthetic cryo-EM data: ground truth, templates, volumes, particle images, metadata.

Everything is a pure function of ``seed`` and the particle index: particle ``i``'s parameters
come from a random stream keyed by ``(seed, i // BLOCK)`` and its noise from one keyed by
``(seed, i // NOISE_BLOCK)``, so any range ``[start, start + n)`` can be generated alone and
batched generation equals one-shot generation bit for bit.  Huge data sets are streamed.

Ground truth: per particle a true class, pose, shift, defocus, scale and a latent ``junk`` flag
(:func:`make_truth`); the statistics are drawn from the known mixtures in :data:`MIXTURES`
(junk particles form the junk component of every per-particle statistic).  Image formation and
geometric conventions are documented in :mod:`cryoframe.synthetic.physics`.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from scipy.spatial.transform import Rotation

import cryoframe.synthetic.physics as ph
from cryoframe.errors import InputError

__all__ = ["BATCH", "BLOCK", "JUNK_KINDS", "MIXTURES", "OPTICS", "Kind", "is_main_field", "make_metadata",
           "make_particles", "make_templates", "make_truth", "make_volumes"]

Kind = Literal["2d", "3d"]

BLOCK = 4096
"""Particles per parameter block (the unit of independent random streams)."""
NOISE_BLOCK = 64
CALIBRATION = 256  # particles 0..255 fix the noise level
PARTICLES_PER_MICROGRAPH = 200
MICROGRAPH_SHAPE = (4092, 5760)  # (ny, nx) px
BATCH = 262_144

OPTICS: dict[str, float] = {"accel_kv": 300.0, "cs_mm": 2.7, "amp_contrast": 0.1, "phase_shift_rad": 0.0}
"""Optics constants of every synthetic particle (kV, mm, fraction, rad)."""

MIXTURES: dict[str, Any] = {
    "junk_fraction": 0.3,
    # components sorted by mean; ``junk_component`` is the one junk particles are drawn from
    "scale": {"weights": [0.3, 0.7], "means": [0.6, 1.0], "sds": [0.08, 0.08], "junk_component": 0},
    "error3d": {"weights": [0.7, 0.3], "means": [9500.0, 10500.0], "sds": [150.0, 250.0], "junk_component": 1},
    "error2d": {"weights": [0.7, 0.3], "means": [7200.0, 7800.0], "sds": [120.0, 160.0], "junk_component": 1},
    "ncc": {"weights": [0.3, 0.7], "means": [0.25, 0.45], "sds": [0.04, 0.05], "junk_component": 0},
    "power": {"weights": [0.3, 0.7], "means": [80.0, 150.0], "sds": [15.0, 20.0], "junk_component": 0},
    # average defocus (Å) of two sessions (= exposure groups 1, 2), clipped to [8000, 25000]
    "defocus": {"weights": [0.4, 0.6], "means": [12000.0, 19000.0], "sds": [1200.0, 1800.0], "range": [8000.0, 25000.0]},
    "astigmatism_A": [0.0, 600.0],  # df1 - df2 ~ U(range); df_angle_rad ~ U(0, pi)
    "shift_px": {"sd": 1.5, "max": 5.0},
    # class posteriors ~ Dirichlet(background + bonus on the true class)
    "posterior": {"background": 0.5, "good": 20.0, "junk": 2.0},
    "alpha_jitter": 0.02,  # alignments*/alpha = alpha_min * (1 + N(0, jitter))
}
"""The known distributions the metadata statistics are drawn from."""

JUNK_KINDS: tuple[str, ...] = ("real", "empty", "debris", "edge")
"""Image-junk kinds (truth ``junk_kind`` is the index): a real particle; an empty pick (noise only);
one-off debris (1-3 random Gaussian blobs, unique per particle); an ice/carbon edge (a smooth step at
a random angle and offset)."""

_PARAMS, _NOISE, _UID, _MIC, _SHUFFLE = 1, 2, 4, 5, 6  # 3: blob models (physics.blob_model)
_MAIN_PREFIXES = ("blob/", "alignments3D/", "alignments3D_multi/", "alignments2D/")


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *(int(k) for k in keys)]))


def _check(kind: str, classes: int = 1, box: int = 8, seed: int = 0) -> None:
    if kind not in ("2d", "3d"):
        raise InputError(f"kind must be '2d' or '3d', got {kind!r}")
    if classes < 1 or box < 8 or seed < 0:
        raise InputError(f"need classes >= 1, box >= 8 px and seed >= 0 (got {classes}, {box}, {seed})")


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijection of uint64 (distinct inputs give distinct outputs)."""
    z = x.astype(np.uint64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _keyed_ids(seed: int, stream: int, idx: np.ndarray) -> np.ndarray:
    key = np.random.SeedSequence([int(seed), stream]).generate_state(1, np.uint64)[0]
    return _mix64(np.asarray(idx, dtype=np.uint64) ^ key)


# -- objects: 2D templates and 3D volumes made of anisotropic Gaussian blobs -----------------------
def make_templates(k: int, box: int, seed: int = 0) -> np.ndarray:
    """``k`` distinct 2D templates, (k, box, box) float32, unit RMS over the box.

    Each is 3-6 anisotropic Gaussian blobs (sd 0.03-0.07 box) centred within 0.2 box of the box
    centre (extent about 0.35 box); no template correlates above 0.85 with a rotated other one.
    """
    _check("2d", k, box, seed)
    c, p, a = ph.blob_model(k, box, seed, 2)
    return ph.render_blobs(c, p, a, box)


def make_volumes(k: int, box: int, seed: int = 0) -> np.ndarray:
    """``k`` 3D volumes (k, box, box, box) float32 indexed ``[z, y, x]``, 4-8 blobs each, unit RMS."""
    _check("3d", k, box, seed)
    c, p, a = ph.blob_model(k, box, seed, 3)
    return np.stack([ph.render_blobs_3d(c[j], p[j], a[j], box) for j in range(k)])


# -- per-particle ground truth ---------------------------------------------------------------------
def _mixture(spec: dict[str, Any], junk: np.ndarray, z: np.ndarray) -> np.ndarray:
    comp = np.where(junk, spec["junk_component"], 1 - spec["junk_component"])
    return np.asarray(spec["means"])[comp] + np.asarray(spec["sds"])[comp] * z


def _dirichlet(g: np.random.Generator, cls: np.ndarray, junk: np.ndarray, k: int) -> np.ndarray:
    spec = MIXTURES["posterior"]
    conc = np.full((len(cls), k), spec["background"])
    conc[np.arange(len(cls)), cls] += np.where(junk, spec["junk"], spec["good"])
    x = g.standard_gamma(conc)
    return x / x.sum(1, keepdims=True)


@lru_cache(maxsize=32)
def _block(seed: int, b: int, kind: str, classes: int) -> dict[str, np.ndarray]:
    """All random per-particle quantities of particles ``b*BLOCK .. (b+1)*BLOCK - 1``."""
    m = BLOCK

    def r(q: int) -> np.random.Generator:  # one stream per quantity: changing one leaves the rest
        return _rng(seed, _PARAMS, b, q)

    t: dict[str, np.ndarray] = {"class": r(0).integers(0, classes, m).astype(np.uint32)}
    g = r(1)
    junk = g.random(m) < MIXTURES["junk_fraction"]
    t["junk"] = junk
    for name in ("scale", "error3d", "error2d", "ncc", "power"):
        t[name] = _mixture(MIXTURES[name], junk, g.standard_normal(m))
    t["alpha"] = t["scale"] * (1 + MIXTURES["alpha_jitter"] * g.standard_normal(m))
    if kind == "3d":
        t["pose"] = Rotation.random(m, random_state=r(2)).as_rotvec()
    else:
        t["pose"] = r(2).uniform(-np.pi, np.pi, m)
    sh = MIXTURES["shift_px"]
    t["shift"] = np.clip(r(3).normal(0.0, sh["sd"], (m, 2)), -sh["max"], sh["max"])
    g = r(4)
    df = MIXTURES["defocus"]
    grp = (g.random(m) < df["weights"][0]).astype(np.uint8) ^ 1  # 0: first session, 1: second
    mean = np.clip(np.asarray(df["means"])[grp] + np.asarray(df["sds"])[grp] * g.standard_normal(m), *df["range"])
    astig_lo, astig_hi = MIXTURES["astigmatism_A"]
    astig = g.uniform(astig_lo, astig_hi, m)
    t["defocus_group"] = grp
    t["df1_A"], t["df2_A"] = mean + astig / 2, mean - astig / 2
    t["df_angle_rad"] = g.uniform(0.0, np.pi, m)
    t["posterior3d"] = _dirichlet(r(5), t["class"], junk, classes)
    t["posterior2d"] = _dirichlet(r(6), t["class"], junk, classes)
    t["split"] = r(7).integers(0, 2, m).astype(np.uint32)
    t["center_frac"] = r(8).uniform(0.02, 0.98, (m, 2))
    g = r(9)  # image junk (used only when junk > 0): draw, kind 1..3, shape parameters
    t["junk_u"] = g.random(m)
    t["junk_kind"] = g.integers(1, len(JUNK_KINDS), m).astype(np.uint8)
    t["junk_par"] = g.random((m, 16))
    for v in t.values():
        v.flags.writeable = False
    return t


def _truth_range(n: int, seed: int, start: int, kind: str, classes: int) -> dict[str, np.ndarray]:
    if n < 0 or start < 0:
        raise InputError(f"need n >= 0 and start >= 0 (got {n}, {start})")
    _check(kind, classes, 8, seed)
    stop = start + n
    parts = []
    for b in range(start // BLOCK, (stop - 1) // BLOCK + 1 if n else start // BLOCK):
        lo, hi = max(start, b * BLOCK) - b * BLOCK, min(stop, (b + 1) * BLOCK) - b * BLOCK
        parts.append({k: v[lo:hi] for k, v in _block(seed, b, kind, classes).items()})
    if not parts:
        return {k: v[:0].copy() for k, v in _block(seed, 0, kind, classes).items()}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


_TRUTH_KEYS = ("class", "junk", "defocus_group", "pose", "shift", "df1_A", "df2_A", "df_angle_rad", "scale")


def _junk_kind(t: dict[str, np.ndarray], junk: float) -> np.ndarray:
    return np.where(t["junk_u"] < junk, t["junk_kind"], 0).astype(np.uint8)


def _check_junk(junk: float) -> None:
    if not 0.0 <= junk < 1.0:
        raise InputError(f"junk must be a fraction in [0, 1), got {junk}")


def make_truth(n: int, seed: int = 0, start: int = 0, kind: Kind = "2d", classes: int = 8,
               junk: float = 0.0) -> dict[str, np.ndarray]:
    """Ground truth of particles ``start .. start + n - 1``.

    With ``junk`` > 0 (fraction of image junk), also ``junk_kind`` (uint8, index into
    :data:`JUNK_KINDS`, 0 = a real particle) and ``view`` (int32: the true class, -1 for image junk).
    ``class`` (true class, 0-based), ``junk`` (bool; the junk component of every statistic — the
    metadata mixtures, independent of the image junk),
    ``defocus_group`` (0/1 defocus-mixture component = ``ctf/exp_group_id - 1``), ``pose``
    (2d: in-plane angle (n,) rad; 3d: rotation vector (n, 3) rad), ``shift`` (n, 2) px (x, y),
    ``df1_A``/``df2_A`` (Å), ``df_angle_rad`` (rad), ``scale`` (per-particle contrast scale).
    """
    _check_junk(junk)
    t = _truth_range(n, seed, start, kind, classes)
    out = {k: t[k] for k in _TRUTH_KEYS}
    if junk > 0:
        out["junk_kind"] = _junk_kind(t, junk)
        out["view"] = np.where(out["junk_kind"] > 0, -1, t["class"].astype(np.int32)).astype(np.int32)
    return out


# -- images ----------------------------------------------------------------------------------------
def _junk_images(kinds: np.ndarray, par: np.ndarray, box: int) -> np.ndarray:
    """Signal of image-junk particles before the CTF, (m, box, box) float32: empty picks are zero;
    debris is 1-3 Gaussian blobs (sd 0.03-0.11 box, centres within 0.25 box of the centre) and
    edges are tanh steps (width 1-4 px) at a random angle and offset (within 0.3 box); both unit
    RMS over the box times an amplitude in [0.7, 1.5] (real templates are unit RMS x scale)."""
    m = len(kinds)
    out = np.zeros((m, box, box), dtype=np.float32)
    g = np.arange(box, dtype=np.float64) - box // 2
    x, y = np.meshgrid(g, g)
    for i in range(m):
        p = par[i]
        if kinds[i] == 2:  # debris
            nb = 1 + int(p[0] * 3)
            c = np.stack([(p[1 + 4 * j : 3 + 4 * j] - 0.5) * 0.5 * box for j in range(nb)])
            sd = np.array([(0.03 + 0.08 * p[3 + 4 * j]) * box for j in range(nb)])
            ecc = np.array([0.5 + p[4 + 4 * j] for j in range(nb)])
            img = sum(np.exp(-0.5 * (((x - c[j, 0]) / (sd[j] * ecc[j])) ** 2 + ((y - c[j, 1]) / (sd[j] / ecc[j])) ** 2))
                      for j in range(nb))
        elif kinds[i] == 3:  # edge
            ang, off, w = p[1] * 2 * np.pi, (p[2] - 0.5) * 0.6 * box, 1.0 + 3.0 * p[3]
            img = np.tanh((x * np.cos(ang) + y * np.sin(ang) - off) / w)
        else:
            continue
        img = img - img.mean() if kinds[i] == 3 else img
        out[i] = img / max(float(np.sqrt(np.mean(img**2))), 1e-12) * (0.7 + 0.8 * p[15])
    return out


def _render(t: dict[str, np.ndarray], box: int, classes: int, psize_A: float, kind: str, seed: int,
            ctf: bool, junk: float = 0.0) -> np.ndarray:
    dim = 3 if kind == "3d" else 2
    cm, pm, am = ph.blob_model(classes, box, seed, dim)
    out = np.empty((len(t["class"]), box, box), dtype=np.float32)
    for s in range(0, len(out), 256):
        sl = slice(s, s + 256)
        cls = t["class"][sl]
        rot = Rotation.from_rotvec(t["pose"][sl]).as_matrix() if dim == 3 else ph.rot2d(t["pose"][sl])
        c, p, a = ph.project_blobs(cm[cls], pm[cls], am[cls] * t["scale"][sl, None], rot, t["shift"][sl])
        img = ph.render_blobs(c, p, a, box)
        if junk > 0:
            jk = _junk_kind(t, junk)[sl]
            bad = jk > 0
            if bad.any():
                img[bad] = _junk_images(jk[bad], t["junk_par"][sl][bad], box)
        if ctf:
            h = ph.ctf_2d(box, psize_A, t["df1_A"][sl], t["df2_A"][sl], t["df_angle_rad"][sl], OPTICS["accel_kv"],
                       OPTICS["cs_mm"], OPTICS["amp_contrast"], OPTICS["phase_shift_rad"])
            img = ph.apply_ctf(img, h)
        out[sl] = img
    return out


@lru_cache(maxsize=16)
def _signal_power(seed: int, box: int, classes: int, psize_A: float, kind: str, ctf: bool) -> float:
    t = _truth_range(CALIBRATION, seed, 0, kind, classes)
    return float(np.mean(np.var(_render(t, box, classes, psize_A, kind, seed, ctf), axis=(1, 2), dtype=np.float64)))


def _noise_sigma(seed: int, box: int, classes: int, psize_A: float, kind: str, ctf: bool, snr: float) -> float:
    return 0.0 if np.isinf(snr) else float(np.sqrt(_signal_power(seed, box, classes, psize_A, kind, ctf) / snr))


def _noise(seed: int, box: int, start: int, n: int) -> np.ndarray:
    out = np.empty((n, box, box), dtype=np.float32)
    for sb in range(start // NOISE_BLOCK, (start + n - 1) // NOISE_BLOCK + 1 if n else 0):
        z = _rng(seed, _NOISE, box, sb).standard_normal((NOISE_BLOCK, box, box), dtype=np.float32)
        lo, hi = max(start, sb * NOISE_BLOCK), min(start + n, (sb + 1) * NOISE_BLOCK)
        out[lo - start : hi - start] = z[lo - sb * NOISE_BLOCK : hi - sb * NOISE_BLOCK]
    return out


def make_particles(
    n: int, box: int = 64, classes: int = 8, snr: float = 0.05, psize_A: float = 2.0, kind: Kind = "2d",
    seed: int = 0, ctf: bool = True, batch_start: int = 0, return_clean: bool = False, junk: float = 0.0,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Particle images ``batch_start .. batch_start + n - 1``: (n, box, box) float32 and their truth.

    Image = scale x (template of the true class rotated in-plane (2d) or projection of the true
    volume in a uniformly random 3D pose (3d)), shifted by ``shift`` px, multiplied by the CTF of
    the particle's defocus in Fourier space (``ctf``), plus white Gaussian noise.  The noise level
    is constant over the data set: noise variance = mean signal variance of particles 0..255 /
    ``snr``, and images are divided by the noise sd (unit-variance noise).  ``snr=inf`` gives the
    noiseless, unnormalised signal.  Pixel size ``psize_A`` Å/px enters through the CTF only.

    The truth dict is :func:`make_truth`'s plus ``noise_sigma`` (0-d, in signal units) and, with
    ``return_clean``, ``clean``: the signal part of the returned images.  Same seed -> identical
    output however the range is split into batches.

    ``junk``: fraction of image junk (:data:`JUNK_KINDS`: empty picks, one-off debris, ice/carbon
    edges) replacing real particles, with the truth's ``junk_kind`` and ``view`` (-1 for junk); the
    noise level stays that of the real particles.  ``junk=0`` gives exactly the junk-free output.
    """
    if not snr > 0:
        raise InputError(f"snr must be > 0 (got {snr})")
    _check(kind, classes, box, seed)
    _check_junk(junk)
    full = _truth_range(n, seed, batch_start, kind, classes)
    truth = make_truth(n, seed, batch_start, kind, classes, junk)
    clean = _render(full, box, classes, psize_A, kind, seed, ctf, junk)
    sigma = _noise_sigma(seed, box, classes, psize_A, kind, ctf, snr)
    if sigma > 0:
        clean /= np.float32(sigma)
        images = clean + _noise(seed, box, batch_start, n)
    else:
        images = clean.copy()
    truth["noise_sigma"] = np.asarray(sigma)
    if return_clean:
        truth["clean"] = clean
    return images, truth


def _names(fmt: str, keys: np.ndarray) -> np.ndarray:
    """``fmt.format(k)`` as fixed-width bytes for sorted integer ``keys`` (formatted once per value)."""
    lo = int(keys[0]) if len(keys) else 0
    u = np.array([fmt.format(k).encode() for k in range(lo, (int(keys[-1]) if len(keys) else lo) + 1)])
    return u[keys - lo]


# -- metadata --------------------------------------------------------------------------------------
def make_metadata(
    n: int, seed: int = 0, start: int = 0, kind: Kind = "2d", classes: int = 8, box: int = 64,
    psize_A: float = 2.0, stack_size: int = 1000, blob_path: str = "J1/imported/particles_{:06d}.mrcs",
) -> dict[str, np.ndarray]:
    """cryoSPARC fields (names and dtypes of ``schemas/fields.json``) of particles ``start..start+n-1``.

    Particle ``i`` is image ``i % stack_size`` (``blob/idx``, 0-based) of stack
    ``blob_path.format(i // stack_size)`` (relative to the project directory).  Poses and shifts
    are the true ones (``alignments3D/pose`` rotation vector rad; for ``kind='2d'`` it is
    ``(0, 0, theta)``; ``alignments2D/pose`` is theta, for 3d the ZYZ psi angle), shifts in px of
    ``psize_A`` Å/px in cryoSPARC's and RELION's convention: the translation that centres the
    particle, i.e. minus the true centre displacement ``make_truth()["shift"]`` (checked against
    RELION 3.1's 2D classification of these particles, whose rlnOriginX/Y come out as minus it).  Classes are the argmax of Dirichlet posteriors concentrated on the true
    class.  ``uid`` is a keyed bijection of the particle index: unique, spread over all 64 bits.
    """
    t = _truth_range(n, seed, start, kind, classes)
    idx = np.arange(start, start + n, dtype=np.int64)

    def full(v: float, dt: str) -> np.ndarray:
        return np.full(n, v, dtype=dt)

    out: dict[str, np.ndarray] = {"uid": _keyed_ids(seed, _UID, idx)}
    out["blob/path"] = _names(blob_path, idx // stack_size)
    out["blob/idx"] = (idx % stack_size).astype("<u4")
    out["blob/shape"] = np.full((n, 2), box, dtype="<u4")
    out["blob/psize_A"] = full(psize_A, "<f4")
    out["blob/sign"] = full(-1.0, "<f4")
    out["ctf/exp_group_id"] = (t["defocus_group"].astype(np.uint32) + 1).astype("<u4")
    for name in ("accel_kv", "cs_mm", "amp_contrast"):
        out[f"ctf/{name}"] = full(OPTICS[name], "<f4")
    for name in ("df1_A", "df2_A", "df_angle_rad"):
        out[f"ctf/{name}"] = t[name].astype("<f4")
    out["ctf/phase_shift_rad"] = full(OPTICS["phase_shift_rad"], "<f4")
    if kind == "3d":
        pose3 = t["pose"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # gimbal lock warnings
            psi = Rotation.from_rotvec(pose3).as_euler("ZYZ")[:, 2] if n else np.zeros(0)
    else:
        psi = t["pose"]
        pose3 = np.stack([np.zeros(n), np.zeros(n), psi], axis=1)
    for g, post, err in (("alignments3D", t["posterior3d"], t["error3d"]), ("alignments2D", t["posterior2d"], t["error2d"])):
        out[f"{g}/pose"] = (pose3 if g == "alignments3D" else psi).astype("<f4")
        out[f"{g}/shift"] = (-t["shift"]).astype("<f4")  # the translation that centres the particle
        out[f"{g}/psize_A"] = full(psize_A, "<f4")
        out[f"{g}/error"] = err.astype("<f4")
        if g == "alignments3D":
            out[f"{g}/split"] = t["split"].astype("<u4")
            out[f"{g}/alpha"] = t["alpha"].astype("<f4")
            out[f"{g}/alpha_min"] = t["scale"].astype("<f4")
        out[f"{g}/class"] = post.argmax(1).astype("<u4") if n else np.zeros(0, "<u4")
        out[f"{g}/class_posterior"] = post.max(1, initial=0.0).astype("<f4")
        out[f"{g}/class_ess"] = (1.0 / np.maximum((post**2).sum(1), 1e-12)).astype("<f4")
    out["alignments3D_multi/class_posterior"] = t["posterior3d"].astype("<f4")
    out["alignments3D_multi/class_ess"] = out["alignments3D/class_ess"].copy()
    mic = idx // PARTICLES_PER_MICROGRAPH
    out["location/micrograph_uid"] = _keyed_ids(seed, _MIC, mic)
    out["location/micrograph_path"] = _names("J1/motioncorrected/mic_{:08d}.mrc", mic)
    out["location/micrograph_shape"] = np.tile(np.asarray(MICROGRAPH_SHAPE, dtype="<u4"), (n, 1))
    out["location/center_x_frac"] = t["center_frac"][:, 0].astype("<f4")
    out["location/center_y_frac"] = t["center_frac"][:, 1].astype("<f4")
    out["pick_stats/ncc_score"] = t["ncc"].astype("<f4")
    out["pick_stats/power"] = t["power"].astype("<f4")
    return out


def is_main_field(name: str) -> bool:
    """Fields of the main particles ``.cs`` (the rest go to the passthrough file)."""
    return name == "uid" or name.startswith(_MAIN_PREFIXES)
