"""Every YAML shipped in configs/ validates against the schema of the command that reads it, so a
config edited by hand (a planner added to a bench, a renamed option) fails here and not an hour into a
run. Bench planners are also checked against each problem that builds without CALPHAD or EMT (the
twin and solid-solution problems are checked that way by `sdl bench` itself, at start)."""

from pathlib import Path

import pytest

from sdl.agents.process_policy import load_policy_config
from sdl.bench.config import BenchConfig, load_bench_config
from sdl.campaign import load_config
from sdl.settings import load_yaml
from sdl.surrogates.causal import load_causal_config
from sdl.surrogates.mlip_environments import EnvironmentsConfig
from sdl.surrogates.mlip_learning import load_active_learning_config
from sdl.surrogates.transfer_learning import load_transfer_config
from sdl.surrogates.xc_training import load_xc_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _bench(path: Path) -> BenchConfig:
    return load_bench_config(path, check_on=lambda spec: spec.kind not in ("twin", "solid_solution"))


READERS = {
    "bench.yaml": _bench, "bench_physics.yaml": _bench, "bench_transfer.yaml": _bench,
    "causal.yaml": load_causal_config,
    "causal_demo.yaml": load_config, "demo.yaml": load_config, "demo_joint.yaml": load_config,
    "demo_pareto.yaml": load_config,
    "layered_bar.yaml": load_config, "mlip_al.yaml": load_config, "quickstart.yaml": load_config,
    "mlip.yaml": load_active_learning_config,
    "mlip_environments.yaml": lambda p: load_yaml(EnvironmentsConfig, p),
    "mlip_environments_bulk.yaml": lambda p: load_yaml(EnvironmentsConfig, p),
    "policy.yaml": load_policy_config,
    "transfer.yaml": load_transfer_config,
    "xc.yaml": load_xc_config,
}


def test_every_shipped_config_has_a_reader_here():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(READERS)


@pytest.mark.parametrize("name", sorted(READERS))
def test_the_shipped_config_validates(name):
    config = READERS[name](CONFIGS / name)
    assert config is not None and type(config).__name__.endswith("Config")
