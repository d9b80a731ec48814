"""Local pose refinement around each particle's best sample (RELION's adaptive oversampling)."""

from __future__ import annotations

import numpy as np

from cryoframe.algorithms.class2d import estep as es
from cryoframe.synthetic import make_particles, make_templates

BOX, PSIZE = 32, 2.0


def test_refinement_beats_the_coarse_grid_on_clean_particles() -> None:
    n = 60
    images, truth = make_particles(n, BOX, 3, np.inf, PSIZE, seed=5)
    ctf = {"df1_A": truth["df1_A"], "df2_A": truth["df2_A"], "df_angle_rad": truth["df_angle_rad"],
           "accel_kv": np.full(n, 300.0), "cs_mm": np.full(n, 2.7), "amp_contrast": np.full(n, 0.1)}
    mask = es.soft_mask(BOX, 14.0, 3.0)
    g = np.arange(-4.0, 5.0, 2.0)
    offsets = np.array([(x, y) for y in g for x in g if x * x + y * y <= 16.0 + 1e-9])
    model = {"refs": make_templates(3, BOX, seed=5) * mask, "log_prior": np.log(np.full(3, 1 / 3)),
             "sigma2": np.full(BOX // 2, 10.0), "psi_deg": np.arange(0.0, 360.0, 10.0), "offsets": offsets,
             "e_shell": BOX // 2 - 1, "mask": mask, "psize_A": PSIZE, "scale_range": (0.2, 5.0),
             "psi_step_deg": 10.0, "offset_step_px": 2.0}
    coarse = es.estep_partition(images, ctf, model, need_stats=False)["particles"]
    fine = es.estep_partition(images, ctf, {**model, "refine_poses": True}, need_stats=False)["particles"]
    np.testing.assert_array_equal(fine["label"], coarse["label"])  # refinement moves poses, not classes
    np.testing.assert_array_equal(coarse["label"], truth["class"])

    def errors(p: dict[str, np.ndarray]) -> tuple[float, float]:
        dpsi = (p["psi_deg"] - np.rad2deg(truth["pose"]) + 180.0) % 360.0 - 180.0
        return float(np.median(np.abs(dpsi))), float(np.median(np.hypot(*(p["shift"] - truth["shift"]).T)))

    (pc, sc), (pf, sf) = errors(coarse), errors(fine)
    assert pc > 1.5 and sc > 0.5, (pc, sc)  # the coarse grid: 10 deg and 2 px steps
    assert pf < 0.6 * pc and sf < 0.6 * sc, (pc, sc, pf, sf)
    assert pf < 1.5 and sf < 0.5, (pf, sf)  # within the 1/8-step reach of the refined grid
