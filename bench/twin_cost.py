"""Cost of the alloy twin (prints figures; not a test).

Cold: tabulating CALPHAD equilibria on the twin's default grid with an empty cache.
Warm: the same build from the disk cache. Then the cost of one simulated furnace experiment and of
evaluating many candidates at once (the vectorised path benchmarks use), against a single
pycalphad equilibrium point measured in the same run.

    python bench/twin_cost.py [--candidates 10000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=10_000)
    args = parser.parse_args()

    from pycalphad import equilibrium
    from pycalphad import variables as v

    from sdl.env.calphad import PhaseEquilibria
    from sdl.env.twin import AlloyTwin, TwinConfig
    from sdl.experiment import DesignPoint, ExperimentSpec, ProcessStep
    from sdl.instruments.alloy_lab import Furnace

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "calphad.sqlite"
        single = PhaseEquilibria()
        t = time.perf_counter()
        equilibrium(single.db, ["AL", "CO", "CR", "NI", "VA"], single._phases,
                    {v.X("AL"): 0.1, v.X("CO"): 0.1, v.X("CR"): 0.1, v.T: 1100.0, v.P: 101325.0, v.N: 1.0})
        single_s = time.perf_counter() - t
        config = TwinConfig()
        n_points = np.prod([a.points for a in config.grid.values()]) * len(config.temperatures_k)
        t = time.perf_counter()
        AlloyTwin(config, cache_path=cache)
        cold_s = time.perf_counter() - t
        t = time.perf_counter()
        twin = AlloyTwin(config, cache_path=cache)
        warm_s = time.perf_counter() - t
        print(f"one pycalphad equilibrium point alone:   {single_s:8.2f} s")
        print(f"twin build, cold cache ({n_points} points): {cold_s:8.2f} s  ({1000 * cold_s / n_points:.1f} ms a point)")
        print(f"twin build, warm cache:                  {warm_s:8.2f} s")

        route = [ProcessStep(operation="solutionise", temperature_k=1500, duration_s=7200, quench_medium="water"),
                 ProcessStep(operation="age", temperature_k=1100, duration_s=14400, quench_medium="water")]
        furnace = Furnace(cache_path=str(cache), time_scale=0)
        spec = lambda i: ExperimentSpec(experiment_id=f"e{i}", campaign_id="bench", process=route,  # noqa: E731
                                        point=DesignPoint(composition={"Ni": 0.7, "Al": 0.1, "Co": 0.1, "Cr": 0.1}))
        t = time.perf_counter()
        for i in range(200):
            furnace.run(spec(i), idempotency_key=f"k{i}")
        furnace_ms = (time.perf_counter() - t) / 200 * 1000
        print(f"simulated furnace experiment, warm:      {furnace_ms:8.2f} ms (journal included); "
              f"cold adds the build above once per furnace")

        rng = np.random.default_rng(0)
        x = rng.uniform([0.02, 0.0, 0.05], [0.14, 0.18, 0.18], (args.candidates, 3))
        t = time.perf_counter()
        props = twin.properties(x, route)
        batch_s = time.perf_counter() - t
        print(f"{args.candidates} candidates at once:        {batch_s:8.3f} s  ({1e6 * batch_s / args.candidates:.1f} us each); "
              f"best HV {props.hardness_hv.max():.0f}")


if __name__ == "__main__":
    main()
