"""Plot layer: figures carry the right elements, viewing directions follow the RELION Euler relation,
PNG files are real non-blank images, HTML pages are self-contained, importing stays lazy."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import holoviews as hv
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cryoframe import plot
from cryoframe.errors import InputError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _elements(fig: hv.Overlay, kind: type) -> list:
    return [el for el in fig if isinstance(el, kind)]


def _gmm_figure(k: int = 3, n: int = 200_000) -> tuple[hv.Overlay, np.ndarray, np.ndarray, dict]:
    rng = np.random.default_rng(0)
    weights, means, sds = np.full(k, 1.0 / k), np.arange(k) * 3.0, np.linspace(0.5, 1.0, k)
    comp = rng.choice(k, size=n, p=weights)
    x = rng.normal(means[comp], sds[comp])
    counts, edges = np.histogram(x, bins=120)
    gmm = {"weights": weights.tolist(), "means": means.tolist(), "variances": (sds**2).tolist(),
           "converged": True}
    fig = plot.histogram_figure(counts, edges, xlabel="value (Å)", title="test", gmm=gmm,
                                thresholds=[1.5, 4.5], set_bounds=[(x.min(), 1.5), (1.5, 4.5), (4.5, x.max())],
                                n_total=n)
    return fig, counts, edges, gmm


def test_import_cryoframe_plot_does_not_import_plotting_libraries() -> None:
    code = ("import sys, cryoframe, cryoframe.plot; "
            "bad = [m for m in ('holoviews', 'bokeh', 'matplotlib', 'panel') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_histogram_with_gmm_has_one_curve_per_component_plus_sum() -> None:
    fig, _, _, _ = _gmm_figure(k=3)
    curves = _elements(fig, hv.Curve)
    assert len(curves) == 4
    assert [c.label for c in curves][-1] == "GMM sum"
    assert len({c.opts.get("style", backend="bokeh").kwargs["color"] for c in curves}) == 4
    assert len(_elements(fig, hv.Histogram)) == 1
    assert len(_elements(fig, hv.VLine)) == 2
    assert len(_elements(fig, hv.VSpan)) == 3
    assert [t.text for t in _elements(fig, hv.Text)] == ["set 0", "set 1", "set 2"]


def test_histogram_without_gmm_has_no_curves() -> None:
    counts, edges = np.histogram(np.random.default_rng(1).normal(size=1000), bins=30)
    fig = plot.histogram_figure(counts, edges, xlabel="x")
    assert len(_elements(fig, hv.Curve)) == 0 and len(_elements(fig, hv.Histogram)) == 1


def test_histogram_gmm_curves_are_in_particles_per_bin() -> None:
    fig, counts, edges, _ = _gmm_figure(k=2)
    total = _elements(fig, hv.Curve)[-1]
    x, y = total.dimension_values(0), total.dimension_values(1)
    binwidth = edges[1] - edges[0]
    # the summed curve integrates to N particles and follows the histogram it was fitted to
    assert np.trapezoid(y, x) / binwidth == pytest.approx(counts.sum(), rel=1e-3)
    centres = 0.5 * (edges[1:] + edges[:-1])
    assert np.interp(centres, x, y) == pytest.approx(counts, rel=0.1, abs=0.02 * counts.max())


def test_histogram_rejects_mismatched_edges_and_bad_gmm() -> None:
    with pytest.raises(InputError):
        plot.histogram_figure(np.ones(10), np.arange(10.0), xlabel="x")
    with pytest.raises(InputError):
        plot.histogram_figure(np.ones(10), np.arange(11.0), xlabel="x", gmm={"weights": [1.0]})


def test_viewing_directions_follow_relion_euler_relation() -> None:
    rot = Rotation.random(5000, random_state=7)
    az, el = plot.viewing_directions_from_rotvec(rot.as_rotvec())
    euler = rot.as_euler("ZYZ", degrees=True)  # (rot, tilt, psi) in RELION's convention
    d_az = (az - euler[:, 0] + 180.0) % 360.0 - 180.0
    assert np.abs(d_az).max() < 1e-6
    np.testing.assert_allclose(el, 90.0 - euler[:, 1], atol=1e-6)
    # and the direction is the third column of the rotation matrix
    a, e = np.radians(az), np.radians(el)
    d = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], axis=1)
    np.testing.assert_allclose(d, rot.as_matrix()[:, :, 2], atol=1e-9)


def test_viewing_directions_identity_points_up_and_nan_pose_gives_nan() -> None:
    az, el = plot.viewing_directions_from_rotvec(np.array([[0.0, 0.0, 0.0], [np.nan, 0.0, 0.0]]))
    assert el[0] == pytest.approx(90.0) and np.isnan(az[1]) and np.isnan(el[1])
    with pytest.raises(InputError):
        plot.viewing_directions_from_rotvec(np.zeros((4, 4)))


def test_viewing_direction_image_counts_every_particle() -> None:
    az, el = plot.viewing_directions_from_rotvec(Rotation.random(3000, random_state=3).as_rotvec())
    img = plot.viewing_direction_figure(az, el, bins=(72, 36))
    z = img.dimension_values(2, flat=False)
    assert z.shape == (36, 72)
    assert np.nansum(z) == 3000
    assert img.range(0) == (-180.0, 180.0) and img.range(1) == (-90.0, 90.0)


def test_gallery_is_one_montage_of_the_right_shape() -> None:
    rng = np.random.default_rng(2)
    images = rng.normal(size=(7, 32, 32)) * 100 + 5
    fig = plot.gallery_figure(images, [f"{k}: {k * 10}" for k in range(7)], ncols=3, title="classes")
    (img,) = _elements(fig, hv.Image)
    mont = img.data
    pad = 1
    assert mont.shape == (3 * 32 + 2 * pad, 3 * 32 + 2 * pad)
    assert np.nanmin(mont) >= 0.0 and np.nanmax(mont) <= 1.0
    tiles = np.isfinite(mont).sum()
    assert tiles == 7 * 32 * 32  # 2 empty tiles and the gaps are NaN
    (labels,) = _elements(fig, hv.Labels)
    assert list(labels.dimension_values("label")) == [f"{k}: {k * 10}" for k in range(7)]
    # default layout is ceil(sqrt(n)) columns
    auto = _elements(plot.gallery_figure(images[:5]), hv.Image)[0].data
    assert auto.shape == (2 * 32 + pad, 3 * 32 + 2 * pad)
    with pytest.raises(InputError):
        plot.gallery_figure(images, ["only one"])


def _figures() -> dict[str, object]:
    rng = np.random.default_rng(4)
    az, el = plot.viewing_directions_from_rotvec(Rotation.random(2000, random_state=5).as_rotvec())
    return {
        "histogram": _gmm_figure(k=2, n=20_000)[0],
        "viewing": plot.viewing_direction_figure(az, el, title="views"),
        "gallery": plot.gallery_figure(rng.normal(size=(6, 24, 24)), [str(k) for k in range(6)]),
    }


def test_save_figure_writes_real_pngs_and_self_contained_html(tmp_path: Path) -> None:
    before = hv.Store.current_backend
    for name, fig in _figures().items():
        written = plot.save_figure(fig, tmp_path / "sub" / name)
        png, html = tmp_path / "sub" / f"{name}.png", tmp_path / "sub" / f"{name}.html"
        assert written == [png, html]
        raw = png.read_bytes()
        assert raw[:8] == PNG_MAGIC and len(raw) > 1000
        pixels = mpimg.imread(png)
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 100
        assert len(np.unique(pixels[..., :3].reshape(-1, 3), axis=0)) > 10, f"{name}.png is blank"
        page = html.read_text(encoding="utf-8")
        assert "Bokeh" in page and 'type="application/json"' in page
        # BokehJS is inline: no tag loads a script, stylesheet or image from elsewhere (no CDN, no
        # relative static/ path).  The inlined BokehJS source itself contains two "https://cdn..." string
        # literals (MathJax and icon-font fallbacks, fetched only by models with math text or icons).
        refs = re.findall(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*[\"']([^\"']*)", page)
        assert refs == []
        assert "<script" in page and page.count("<script") == page.count("<script>") + page.count(
            '<script type="application/json"')
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == sorted(
        f"{n}.{ext}" for n in ("histogram", "viewing", "gallery") for ext in ("png", "html"))
    assert hv.Store.current_backend == before
    assert plt.get_fignums() == []


def test_save_figure_leaves_current_backend_and_honours_flags(tmp_path: Path) -> None:
    fig = _figures()["viewing"]
    prev = hv.Store.current_backend
    try:
        for backend in ("bokeh", "matplotlib"):
            hv.Store.set_current_backend(backend)
            assert plot.save_figure(fig, tmp_path / f"v_{backend}", html=False) == [tmp_path / f"v_{backend}.png"]
            assert plot.save_figure(fig, tmp_path / f"w_{backend}", png=False) == [tmp_path / f"w_{backend}.html"]
            assert hv.Store.current_backend == backend
    finally:
        hv.Store.set_current_backend(prev)
