"""``cryoframe view`` driven in a real headless Chromium (selenium): typed expressions, a box drag on
the scatter, save, the class gallery and bad input, each checked against ``cryoframe query`` /
``select2d``.  Skipped with the reason when chromium, chromedriver or selenium is missing (CI installs
them: ``apt-get install -y chromium chromium-driver``)."""

from __future__ import annotations

import numpy as np
import pytest

from cryoframe import api
from cryoframe.storage.store import ParticleStore
from cryoframe.view.browser import Page, free_port, missing

pytestmark = [pytest.mark.skipif(missing() is not None, reason=f"browser tests: {missing()}"), pytest.mark.slow]


@pytest.fixture(scope="module")
def c2d(tmp_path_factory):
    """A real 2D classification (4 classes, 2 iterations) of a tiny synthetic store."""
    d = tmp_path_factory.mktemp("view_c2d")
    s = api.synth(d / "s.cf", n=600, box=32, classes=4, seed=1)
    return api.class2d(s, d / "c.cf", classes=4, iters=2, psi_step_deg=30, offset_range_px=0, plots=False)


@pytest.fixture(scope="module")
def server(c2d, tmp_path_factory):
    from cryoframe.view.server import make_data, serve

    save_dir = tmp_path_factory.mktemp("view_saves")
    port = free_port()
    thread = serve(make_data(c2d), port=port, show=False, save_dir=save_dir, threaded=True)
    try:
        yield f"http://127.0.0.1:{port}/", save_dir
    finally:
        thread.stop()


@pytest.fixture()
def page(server):
    p = Page(server[0])
    try:
        yield p
    finally:
        p.close()


def _uids(s: ParticleStore) -> np.ndarray:
    return s.table(["uid"]).column(0).to_numpy()


def test_typed_expression_count_equals_query(page, c2d):
    assert page.count() == c2d.n
    where = "`alignments2D/class_posterior` > 0.5 and `ctf/df1_A` < 20000"
    page.type_where(where)
    n = page.wait(lambda: page.count() if page.count() != c2d.n else None)
    assert n == len(api.query(c2d, where, columns=["uid"])) > 0
    assert page.where() == where


def test_box_drag_expression_selects_the_counted_particles(page, c2d):
    page.drag_scatter(0.2, 0.2, 0.7, 0.8)
    n = page.wait(lambda: page.count() if page.count() != c2d.n else None)
    where = page.wait(lambda: page.where() or None)
    assert "<= `" in where and " and " in where  # ranges on the scatter's two fields
    assert 0 < n < c2d.n
    assert n == len(api.query(c2d, where, columns=["uid"]))


def test_save_writes_the_query_result(page, server, c2d, tmp_path):
    where = "`ctf/df1_A` > 15000"
    page.type_where(where)
    page.wait(lambda: page.count() != c2d.n)
    page.type_into("save-name", "hi_defocus")
    page.click("save")
    msg = page.wait(lambda: page.text("message") if "saved" in page.text("message") else None)
    out = server[1] / "hi_defocus.cf"
    ref = api.query(c2d, where, out=tmp_path / "ref.cf")
    assert str(out) in msg and f"saved {ref.n} particles" in msg
    assert np.array_equal(_uids(ParticleStore(out)), _uids(ref))
    page.click("save")  # the same name again is refused, nothing overwritten
    page.wait(lambda: "exists" in page.text("message"))


def test_gallery_click_equals_select2d(page, c2d, tmp_path):
    assert page.find("gallery") is not None
    page.click("class-1")
    page.click("class-3")
    page.wait(lambda: page.where() == "`alignments2D/class` in [1, 3]")
    n = page.wait(lambda: page.count() if page.count() != c2d.n else None)
    ref = api.select2d(c2d, tmp_path / "sel.cf", classes=[1, 3])
    assert n == ref.n
    page.type_into("save-name", "classes13")
    page.click("save")
    page.wait(lambda: "saved" in page.text("message"))


def test_bad_input_is_refused_on_the_page(page, c2d):
    page.type_where("`ctf/df1_A` < 0")
    page.wait(lambda: page.count() == 0)
    page.type_into("save-name", "nothing")
    page.click("save")
    page.wait(lambda: "empty" in page.text("message"))
    page.type_where("`ctf/df1_A` < < 3")  # malformed: error shown, selection kept
    err = page.wait(lambda: page.text("where-error") or None)
    assert "bad expression" in err and page.count() == 0
    page.type_where("`no/such_field` > 1")
    page.wait(lambda: "no/such_field" in page.text("where-error"))
    assert page.count() == 0
    assert "Traceback" not in page.driver.page_source
