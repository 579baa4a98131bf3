"""A confounded lab history from the twin: what a lab's past practice leaves in its ledger.

The practice (seeded, documented here, and the same in the causal bench):

- Every specimen belongs to one of two eras, drawn 50/50 and **not recorded** (the latent confounder).
- Era "precipitation hardening" made lean alloys (Al 2.5-9 at.%) and mostly (85 %) gave them a long,
  cold ageing: solutionise 1290-1310 K for 2 h, age 940-1000 K for 16-32 h.
- Era "high-temperature service" made Al-rich alloys (Al 7-14 at.%) for creep strength and mostly
  (80 %) stabilised them: solutionise 1290-1310 K for 2 h, then 1150-1220 K for 24-96 h (coarse,
  over-aged gamma-prime).
- The remaining 15 % / 20 % got the other era's treatment; Co and Cr are drawn 0-15 at.% each,
  independently of the era; Ni is the balance.

So Al and the heat treatment are correlated through the era: the Al-rich alloys were mostly
over-aged, and a regression of hardness on Al alone mixes Al's strong positive effect with the
stabilisation's softening (in the bench's history it has the wrong sign).
Each specimen's outcome is the twin's (the same kinetics and strength model the simulated furnace
and hardness tester use), with the tester's measurement noise; ``sdl causal history`` writes the rows
into a real campaign ledger (:func:`sdl.agents.causal_planner.write_history`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sdl.env.heat_treatment import hold_step
from sdl.env.twin import AlloyTwin
from sdl.experiment import ProcessStep

ERAS = ("precipitation_hardening", "high_temperature_service")


@dataclass(frozen=True)
class HistoricalSpecimen:
    composition: dict[str, float]
    route: list[ProcessStep]
    era: str  # latent: kept for the bench's ground truth, never written to the ledger


def past_practice(n: int, seed: int = 0, *, balance: str = "Ni") -> list[HistoricalSpecimen]:
    """``n`` specimens chosen and heat-treated by the practice in the module docstring."""
    if n < 1:
        raise ValueError(f"n = {n}: ask for at least one specimen")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        era = int(rng.integers(2))
        al = rng.uniform(0.025, 0.09) if era == 0 else rng.uniform(0.07, 0.14)
        co, cr = rng.uniform(0.0, 0.15, size=2)
        cold_ageing = rng.random() < (0.85 if era == 0 else 0.20)
        solution = (rng.uniform(1290, 1310), 7200.0)
        if cold_ageing:
            holds = [solution, (rng.uniform(940, 1000), 3600.0 * rng.uniform(16, 32))]
        else:
            holds = [solution, (rng.uniform(1150, 1220), 3600.0 * rng.uniform(24, 96))]
        composition = {"Al": al, "Co": co, "Cr": cr, balance: 1.0 - al - co - cr}
        out.append(HistoricalSpecimen(composition, [ProcessStep.model_validate(hold_step(t, d)) for t, d in holds],
                                      ERAS[era]))
    return out


def outcomes(twin: AlloyTwin, specimens: list[HistoricalSpecimen], *, noise_hv: float = 5.0,
             seed: int = 0) -> list[dict[str, float]]:
    """The measurements each specimen's ledger row gets: composition, microstructure, hardness
    (the twin's, plus the hardness tester's Gaussian noise)."""
    rng = np.random.default_rng([seed, 1])
    rows = []
    for s in specimens:
        p = twin.properties([s.composition], s.route, phase_state="table")
        m = p.microstructure
        rows.append({
            **{f"x_{e}": float(v) for e, v in s.composition.items()},
            "grain_size_um": float(m.grain_size_m[0] * 1e6),
            "gamma_prime_fraction": float(m.precipitate_fraction[0]),
            "gamma_prime_radius_nm": float(m.precipitate_radius_m[0] * 1e9),
            "hardness_hv": float(p.hardness_hv[0] + rng.normal(0.0, noise_hv)),
        })
    return rows
