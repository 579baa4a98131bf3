"""Every agent kind in a campaign started from YAML (the MLIP and generative surrogates included), and a
third-party agent registered by entry point in a package of its own."""

from __future__ import annotations

import os
import textwrap

import pytest
import ray

from sdl.campaign import Campaign, parse_config
from sdl.campaign.launcher import LaunchError, resolve_gpus
from sdl.ledger import Ledger
from sdl.ledger.documents import AgentJoined, AgentPlaced, FeasibilityLearned, RoutePlanned

from conftest import branin_config

SMALL_TWIN = {
    "grid": {"Al": {"low": 0.0, "high": 0.15, "points": 4}, "Co": {"low": 0.05, "high": 0.15, "points": 2},
             "Cr": {"low": 0.05, "high": 0.15, "points": 2}},
    "temperatures_k": [1000.0, 1050.0, 1100.0, 1300.0],
}
PLUGIN = textwrap.dedent('''
    """A lab's own planner, in its own package: the corners and centre of the space, in turn."""
    from pydantic import Field

    from sdl.agents.planner import Planner
    from sdl.experiment import DesignPoint
    from sdl.settings import Section

    class CornerSettings(Section):
        inset: float = Field(default=0.1, ge=0.0, lt=0.5, description="how far inside the bounds")
        points: int = Field(default=1000, ge=1, description="how many it has to give")

    class CornerPlanner(Planner):
        name = "corners"
        Settings = CornerSettings

        def propose(self, request):
            position = len(request.observations) + len(request.pending)
            points = []
            for k in range(position, min(position + request.n, self.settings.points)):
                u = [0.5, 0.5] if k % 5 == 4 else [(k % 5) & 1, (k % 5) >> 1 & 1]
                u = [self.settings.inset + x * (1 - 2 * self.settings.inset) for x in u]
                (point,), _ = self.space.from_unit_cube([u])
                points.append(point)
            return points
''')


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    """A distribution with an ``sdl.agents`` entry point, on the path of this process and of Ray's workers
    (no pip install: its dist-info beside its module is what importlib.metadata reads)."""
    root = tmp_path_factory.mktemp("plugin")
    (root / "corner_lab.py").write_text(PLUGIN)
    dist = root / "corner_lab-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: corner-lab\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[sdl.agents]\nplanner.corners = corner_lab:CornerPlanner\n")
    return root


@pytest.fixture(scope="module", autouse=True)
def ray_session(plugin_path):
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugin_path), previous]))  # Ray's workers inherit it
    import sys

    sys.path.insert(0, str(plugin_path))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    sys.path.remove(str(plugin_path))
    if previous is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = previous


def test_a_campaign_starts_every_agent_kind(tmp_path):
    cache = str(tmp_path / "calphad.sqlite")
    furnace = {"twin": SMALL_TWIN, "cache_path": cache, "time_scale": 0,
               "limits": {"min_temperature_k": 1000, "max_temperature_k": 1300}}
    config = parse_config({
        "name": "every-agent",
        "space": {"composition": {"elements": {"Ni": [0.6, 0.9], "Al": [0.02, 0.135], "Co": [0.06, 0.14],
                                               "Cr": [0.06, 0.14]}, "balance": "Ni"}},
        "objective": {"measurement": "hardness_hv", "direction": "maximize"},
        # the generative model as the planner: alloys drawn for a hardness target, learned from the results
        "planner": {"kind": "generative", "settings": {"twin_samples": 0, "initial_points": 3, "epochs": 20,
                                                       "candidates": 32}},
        # no policy (the shipped one's 1400 K holds exceed this furnace): the textbook route, said in the ledger
        "process_planner": {"kind": "process", "settings": {"policy": None}},
        "surrogates": [
            {"kind": "gp"},
            {"kind": "mlip", "settings": {"architecture": "nep", "potential": {"elements": ["Ni", "Al"], "hidden_layers": [8],
                                                        "radial_channels": 2, "angular_channels": 2}}},
            {"kind": "generative", "settings": {"twin_samples": 64, "epochs": 5, "field_size": 16,
                                                "field_samples": 16, "field_epochs": 1}},
        ],
        "simulators": [{"kind": "phase_boundary", "settings": {"calphad_calls": 8, "degree": 1, "pool_size": 64,
                                                               "cache_path": cache}}],
        "workflow": ["melt", "heat_treat", "hardness", "xrd"],
        "instruments": [
            {"name": "melter", "driver": "arc_melter", "station": "melt", "options": {"time_scale": 0}},
            {"name": "furnace", "driver": "furnace", "station": "heat_treat", "options": furnace},
            {"name": "hardness", "driver": "hardness_tester", "station": "hardness", "options": {"time_scale": 0}},
            {"name": "xrd", "driver": "xrd", "station": "xrd", "options": {"time_scale": 0}},
        ],
        "stop": {"max_experiments": 6, "max_in_flight": 2},
        "bus": {"join_timeout_s": 600},
        "ledger": {"synchronous": "normal"},
    })
    # the process planner plans within the furnace's own limits, read from its parameters
    assert config.agent_context().process_limits.max_temperature_k == 1300
    summary = Campaign(config, tmp_path / "c", progress=False).run()
    assert summary.state == "completed" and sum(summary.counts.values()) == 6
    with Ledger.in_campaign(tmp_path / "c", readonly=True) as ledger:
        placed = {d.service: d for d in ledger.documents(AgentPlaced)}
        joined = {d.service for d in ledger.documents(AgentJoined)}
        records = ledger.experiments()
        routes = ledger.documents(RoutePlanned)
        recommendation = ledger.get_meta("recommendation")
        learned = ledger.documents(FeasibilityLearned)
    expected = {"planner.generative", "planner.process", "surrogate.gp", "surrogate.mlip", "surrogate.generative",
                "simulator.phase_boundary", "instrument.melter", "instrument.furnace", "instrument.hardness",
                "instrument.xrd"}
    assert set(placed) == expected and expected <= joined
    assert {r.planner for r in records} == {"generative"}
    assert len(routes) == 6 and all(d.source == "textbook" and "no process policy configured" in d.note
                                    for d in routes)
    assert not learned  # the generative planner weighs nothing by P(feasible): nobody asked the classifier
    assert recommendation.get("n_train", 0) >= 2  # the GP surrogate fitted the results at the end


def test_a_third_party_agent_registered_by_entry_point_runs_a_campaign(tmp_path):
    config = branin_config(planner={"kind": "corners", "settings": {"inset": 0.25}},
                           stop={"max_experiments": 5, "max_in_flight": 1})
    assert type(config.planner.settings).__name__ == "CornerSettings"  # validated by the plugin's own model
    summary = Campaign(config, tmp_path / "c", progress=False).run()
    assert summary.counts["done"] == 5
    with Ledger.in_campaign(tmp_path / "c", readonly=True) as ledger:
        records = ledger.experiments()
    assert {r.planner for r in records} == {"corners"}
    x1 = sorted({round(r.point.parameters["x1"], 6) for r in records})
    assert x1 == [-1.25, 2.5, 6.25]  # corners at 0.25 and 0.75 of [-5, 10], and the centre


def test_a_planner_with_nothing_left_to_propose_ends_the_campaign(tmp_path):
    config = branin_config(planner={"kind": "corners", "settings": {"points": 3}},
                           stop={"max_experiments": 8, "max_in_flight": 2})
    summary = Campaign(config, tmp_path / "c", progress=False).run()
    assert (summary.state, summary.stop_reason, summary.counts["done"]) == ("completed", "planner_exhausted", 3)


def test_gpus_are_counted_as_they_are_given_out():
    """Two `auto` agents on a one-GPU cluster: the first gets it, the second runs on the CPU (Ray's own count of
    free GPUs lags behind actors being created, so both would ask for it and one would never start)."""
    free, given = 1.0, []
    for asked in ("auto", "auto", 0.0):
        given.append(resolve_gpus(asked, free))
        free -= given[-1]
    assert given == [1.0, 0.0, 0.0]
    with pytest.raises(LaunchError, match="num_gpus 1 asked for, but the Ray cluster has 0 GPUs free"):
        resolve_gpus(1, 0.0)
