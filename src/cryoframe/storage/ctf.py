"""Per-particle CTF parameters of a store, read in one place for every job and estimator.

Units: defoci in Å, astigmatism angle and phase shift in rad, voltage in kV, Cs in mm,
amplitude contrast as a fraction (cryoSPARC's ``ctf/`` fields).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from cryoframe.errors import InputError
from cryoframe.schema.types import numeric_values

if TYPE_CHECKING:
    from cryoframe.storage.store import ParticleStore

__all__ = ["CTF_KEYS", "OPTIONAL_CTF_KEYS", "read_ctf_params"]

CTF_KEYS = ("df1_A", "df2_A", "df_angle_rad", "accel_kv", "cs_mm", "amp_contrast")
"""Required CTF parameters (store fields ``ctf/<key>``)."""
OPTIONAL_CTF_KEYS = ("phase_shift_rad",)
"""Read when the store has them (phase plates); absent means zero."""
_VALID = {"accel_kv": ((0.0, np.inf), "> 0 kV"), "amp_contrast": ((0.0, 1.0), "in [0, 1)")}
"""Ranges outside which the CTF is undefined (the electron wavelength at 0 kV, the phase ``arcsin`` of
the amplitude contrast): the maps would be NaN.  Lower bound inclusive for the contrast only."""


def read_ctf_params(store: ParticleStore, hint: str = "use --no-ctf", need: str = "CTF correction") -> dict[str, np.ndarray]:
    """``{key: float64 array (n,)}`` for :data:`CTF_KEYS` plus ``phase_shift_rad`` when the store
    has ``ctf/phase_shift_rad``.  Raises :class:`InputError` naming the store, what ``need``s the fields
    and every missing one, then ``hint``."""
    missing = [f"ctf/{k}" for k in CTF_KEYS if f"ctf/{k}" not in store.fields]
    if missing:
        raise InputError(f"{store.path}: {need} needs field(s) {', '.join(missing)}; {hint}")
    keys = [*CTF_KEYS, *(k for k in OPTIONAL_CTF_KEYS if f"ctf/{k}" in store.fields)]
    t = store.table([f"ctf/{k}" for k in keys])
    out = {k: numeric_values(t.column(f"ctf/{k}")).astype(np.float64) for k in keys}
    for k, v in out.items():  # a NaN defocus (or a 0 kV voltage) makes every map and score NaN
        what = "NaN, null or infinite"
        ok = np.isfinite(v)
        if k in _VALID and ok.all():
            (lo, hi), what = _VALID[k][0], f"not {_VALID[k][1]}"
            ok = ((v > lo) if k == "accel_kv" else (v >= lo)) & (v < hi)
        bad = np.flatnonzero(~ok)
        if len(bad):
            from cryoframe.storage.store import bad_particles

            raise bad_particles(store, bad, f"field ctf/{k} is {what} for {{who}} (value {v[bad[0]]:g})",
                                f"{need} needs valid values: fix them, {hint}")
    return out
