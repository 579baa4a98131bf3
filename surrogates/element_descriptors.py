"""Per-element physical descriptors: what a composition model knows of an element it has never seen.

From ``mendeleev`` (a maintained periodic table whose data ship inside the package: no download), one
query for the whole table. The choice follows what sets the energy and stiffness of a metallic solid
solution:

- Miedema's three parameters (electronegativity phi*, electron density at the Wigner-Seitz cell
  boundary n_ws, molar volume V^(2/3)): the classic per-element inputs of an alloy's formation
  enthalpy (de Boer et al., *Cohesion in Metals*, 1988);
- size: the lattice constant of the element's ground-state structure and the metallic radius (size
  mismatch strains a solid solution);
- cohesion: the heats of evaporation and fusion (they track the cohesive energy and bulk modulus);
- Pauling electronegativity and the group (d-band filling).

Each is standardised by its mean and standard deviation over :data:`REFERENCE_ELEMENTS` (the metals of
the d block and Al), a fixed set, so an element's vector does not depend on which alloy system a model
was trained on. An element without one of the descriptors is refused, naming what is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

# mendeleev column -> the descriptor's name with its unit
DESCRIPTORS = {
    "en_miedema": "miedema_electronegativity_v",
    "miedema_electron_density": "miedema_electron_density_du",
    "miedema_molar_volume": "miedema_molar_volume_cm2",
    "lattice_constant": "lattice_constant_ang",
    "metallic_radius": "metallic_radius_pm",
    "evaporation_heat": "evaporation_heat_kj_per_mol",
    "fusion_heat": "fusion_heat_kj_per_mol",
    "en_pauling": "electronegativity_pauling",
    "group_id": "group",
}
REFERENCE_ELEMENTS = ("Al", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Y", "Zr", "Nb", "Mo", "Ru",
                      "Rh", "Pd", "Ag", "Cd", "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt", "Au")


@lru_cache(maxsize=1)
def _table():
    from mendeleev.fetch import fetch_table  # ~1 s: imported on first use only

    return fetch_table("elements").set_index("symbol")[list(DESCRIPTORS)]


@lru_cache(maxsize=1)
def standardisation() -> tuple[np.ndarray, np.ndarray]:
    """(mean, sd) of each descriptor over :data:`REFERENCE_ELEMENTS`."""
    values = _table().loc[list(REFERENCE_ELEMENTS)].to_numpy(dtype=float)
    return np.nanmean(values, axis=0), np.nanstd(values, axis=0)


def raw_descriptors(element: str) -> np.ndarray:
    """The descriptors of ``element`` in their own units (order of :data:`DESCRIPTORS`)."""
    table = _table()
    if element not in table.index:
        raise ValueError(f"{element!r} is not an element symbol (e.g. Ni, Pt)")
    row = table.loc[element].to_numpy(dtype=float)
    missing = [DESCRIPTORS[c] for c, v in zip(DESCRIPTORS, row) if not np.isfinite(v)]
    if missing:
        raise ValueError(f"mendeleev has no {', '.join(missing)} for {element}; a composition model needs every "
                         f"descriptor of each element ({', '.join(DESCRIPTORS.values())})")
    return row


def descriptor_matrix(elements: Sequence[str]) -> np.ndarray:
    """Standardised descriptors, one row per element (len(elements) x len(DESCRIPTORS))."""
    mean, sd = standardisation()
    return np.stack([(raw_descriptors(e) - mean) / sd for e in elements])
