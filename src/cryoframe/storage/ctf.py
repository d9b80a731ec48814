"""Per-particle CTF parameters of a store, read in one place for every job and estimator.

Units: defoci in Å, astigmatism angle and phase shift in rad, voltage in kV, Cs in mm,
amplitude contrast as a fraction (cryoSPARC's ``ctf/`` fields).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from cryoframe.errors import InputError
from cryoframe.schema.types import numeric_values
from cryoframe.storage.checks import bad_particles

if TYPE_CHECKING:
    from cryoframe.storage.store import ParticleStore

__all__ = ["CTF_KEYS", "OPTIONAL_CTF_KEYS", "read_ctf_params"]

CTF_KEYS = ("df1_A", "df2_A", "df_angle_rad", "accel_kv", "cs_mm", "amp_contrast")
"""Required CTF parameters (store fields ``ctf/<key>``)."""
OPTIONAL_CTF_KEYS = ("phase_shift_rad",)
"""Read when the store has them (phase plates); absent means zero."""
_VALID: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str]] = {
    "accel_kv": (lambda v: v > 0, "> 0 kV"),
    "amp_contrast": (lambda v: (v >= 0) & (v < 1), "in [0, 1)"),
}
"""Where the CTF is defined (the electron wavelength at 0 kV and the phase ``arcsin`` of the amplitude
contrast are not): outside, the maps would be NaN."""


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
            valid, rule = _VALID[k]
            ok, what = valid(v), f"not {rule}"
        bad = np.flatnonzero(~ok)
        if len(bad):
            raise bad_particles(store, bad, f"field ctf/{k} is {what} for {{who}} (value {v[bad[0]]:g})",
                                f"{need} needs valid values: fix them, {hint}")
    return out
