"""What running MLIP active learning through the controller costs: time per round, campaign vs in-process.

    python bench/mlip_al_overhead.py configs/mlip_al.yaml --experiments 40 --architecture nep

The same planner (``planner.mlip_al``), MLIP agent and DFT instrument, the same seed and settings, two ways:

- **campaign**: ``sdl run`` — Ray actors, the authenticated-less local bus, the SQLite ledger (every
  result and training round committed before it is acted on), the instrument's journal;
- **in-process**: the planner object calls the agent object's methods directly and the instrument's
  ``run`` labels each structure, in one Python process, nothing recorded.

A round is the time from one training round's end to the next's (training, exploration, selection
and labelling in between). Prints both medians and their ratio (target <= 1.2) and writes
overhead.json in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml


class DirectCalls:
    """The planner's bus client replaced by direct method calls on the agent (what in-process means)."""

    def __init__(self, agent) -> None:
        self.agent = agent

    def request(self, service: str, method: str, payload, *, timeout_s: float = 0.0) -> dict:
        return getattr(self.agent, method)(payload).model_dump()


def in_process(config: dict, experiments: int, out: Path) -> list[float]:
    """Run the loop in this process; the wall time at the end of each training round."""
    from sdl.agents.base import AgentContext
    from sdl.agents.mlip_al_planner import MlipAlPlanner
    from sdl.agents.mlip_host import MlipAgent, MlipSettings
    from sdl.agents.planner import ProposeRequest
    from sdl.experiment import ExperimentSpec, Observation
    from sdl.instruments.atomistic import AseCalculatorOracle
    from sdl.space import SearchSpace

    context = AgentContext(space=SearchSpace.model_validate(config["space"]), seed=config.get("seed", 0))
    surrogate = config["surrogates"][0]["settings"]
    agent = MlipAgent(MlipSettings.model_validate({**surrogate, "rounds_dir": str(out / "in_process_rounds")}), context)
    planner = MlipAlPlanner(MlipAlPlanner.Settings.model_validate(config["planner"].get("settings") or {}), context)
    planner._client = DirectCalls(agent)
    oracle = AseCalculatorOracle(**config["instruments"][0].get("options", {}))
    batch = config.get("stop", {}).get("max_in_flight", 4)
    observations, round_ends, started = [], [], time.perf_counter()
    while len(observations) < experiments:
        points = planner.propose(ProposeRequest(n=min(batch, experiments - len(observations)), observations=observations))
        if planner.trained:
            round_ends.append(time.perf_counter() - started)
        for k, point in enumerate(points):
            spec = ExperimentSpec(experiment_id=f"e{len(observations):05d}", campaign_id="in-process", point=point,
                                  structure=point.structure)
            result = oracle.run(spec, idempotency_key=spec.experiment_id)
            observations.append(Observation(point=point, status="done", measurements=result.measurements,
                                            arrays=result.arrays))
    return round_ends


def campaign(config_path: Path, campaign_dir: Path) -> list[float]:
    """Run ``sdl run``; the wall time (from the campaign's start) of each training round in its ledger."""
    from sdl.ledger import Ledger
    from sdl.ledger.documents import CampaignStarted, ModelTrained

    subprocess.run([sys.executable, "-m", "sdl.cli", "run", str(config_path), "--campaign-dir", str(campaign_dir),
                    "--no-progress"], check=True)
    with Ledger.in_campaign(campaign_dir, readonly=True) as ledger:
        start = ledger.documents(CampaignStarted)[0].at_unix_s
        return [d.at_unix_s - start for d in ledger.documents(ModelTrained)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path, help="an active-learning campaign (planner: mlip_al)")
    parser.add_argument("--experiments", type=int, default=40, help="labelled structures per run")
    parser.add_argument("--out", type=Path, default=Path("runs/mlip/al_overhead"))
    parser.add_argument("--architecture", choices=("nep", "mace"),
                        help="the MLIP agent's (default: the config's); nep's short rounds show the controller's "
                             "share, a CPU's MACE rounds are minutes of training")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(args.config.read_text())
    config["stop"] = {**config.get("stop", {}), "max_experiments": args.experiments}
    config["surrogates"][0]["settings"]["rounds_dir"] = str((args.out / "campaign_rounds").resolve())
    config["surrogates"][0]["settings"]["device"] = "cpu"
    if args.architecture:
        config["surrogates"][0]["settings"]["architecture"] = args.architecture
        if args.architecture == "nep":
            config["surrogates"][0]["settings"].pop("mace", None)
    campaign_config = args.out / "campaign.yaml"
    campaign_config.write_text(yaml.safe_dump(config))

    import torch

    torch.set_num_threads(2)
    inside = in_process(config, args.experiments, args.out)
    print(f"in-process: {len(inside)} training rounds, ends at {', '.join(f'{t:.0f}' for t in inside)} s", flush=True)
    through = campaign(campaign_config, args.out / "campaign")
    print(f"campaign:   {len(through)} training rounds, ends at {', '.join(f'{t:.0f}' for t in through)} s", flush=True)
    # the first round includes start-up (Ray, actors, torch's first compile): rounds are the gaps after it
    rounds_in, rounds_through = np.diff(inside), np.diff(through)
    ratio = float(np.median(rounds_through) / np.median(rounds_in))
    result = {"experiments": args.experiments, "in_process_round_ends_s": inside, "campaign_round_ends_s": through,
              "median_round_s": {"in_process": float(np.median(rounds_in)), "campaign": float(np.median(rounds_through))},
              "ratio": ratio}
    (args.out / "overhead.json").write_text(json.dumps(result, indent=1))
    print(f"median time per round: in-process {np.median(rounds_in):.1f} s, through the controller "
          f"{np.median(rounds_through):.1f} s: {ratio:.2f}x (target <= 1.2)")


if __name__ == "__main__":
    main()
