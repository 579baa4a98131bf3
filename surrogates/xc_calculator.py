"""An ASE calculator around PySCF: Kohn-Sham DFT of molecules and clusters with a libxc functional or
a learned one, so the DFT instrument (``calculator: pyscf``) and the MLIP's oracle can use either.

``PyscfCalculator(xc="pbe" | "b3lyp" | "scan" | "path/to/functional.pt", basis="def2-svp")``: energy
and forces (analytic nuclear gradients; for the learned GGA through its autograd potential). Molecules
only: a periodic cell is refused (PySCF's periodic code is a different program). The spin is the
lowest the electron count allows unless ``spin`` (unpaired electrons) is given.
"""

from __future__ import annotations

from ase.calculators.calculator import CalculationFailed, Calculator, all_changes
from ase.units import Bohr, Hartree

from sdl.env.quantum_chemistry import build_molecule, run_scf
from sdl.surrogates.xc_training import LIBXC_FUNCTIONALS, resolve_functional


class PyscfCalculator(Calculator):
    implemented_properties = ["energy", "forces"]
    supports_periodic = False  # read by the DFT instrument, which refuses periodic structures up front
    default_parameters = {"xc": "pbe", "basis": "def2-svp", "charge": 0, "spin": None, "grid_level": 3}

    def __init__(self, **kwargs) -> None:
        unknown = sorted(set(kwargs) - set(self.default_parameters) - {"label", "atoms", "directory"})
        if unknown:
            raise ValueError(f"PyscfCalculator: unknown option(s) {', '.join(unknown)}; allowed: "
                             f"{', '.join(self.default_parameters)}")
        super().__init__(**kwargs)
        try:
            self._xc = resolve_functional(self.parameters.xc)
        except ValueError as e:
            raise ValueError(f"xc {self.parameters.xc!r}: one of {', '.join(LIBXC_FUNCTIONALS)} or a checkpoint "
                             f"written by `sdl xc train` ({e})") from None

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        if self.atoms.pbc.any():
            raise CalculationFailed("PyscfCalculator computes molecules and clusters; this structure is periodic")
        p = self.parameters
        result = run_scf(build_molecule(self.atoms, p.basis, charge=p.charge, spin=p.spin), self._xc,
                         grid_level=p.grid_level)
        if not result.converged:
            raise CalculationFailed(f"SCF with {p.xc} did not converge for {self.atoms.get_chemical_formula()}")
        self.results["energy"] = result.energy_ha * Hartree
        if "forces" in properties:
            gradient = result.mf.nuc_grad_method().kernel()  # hartree / bohr
            self.results["forces"] = -gradient * Hartree / Bohr
