"""The heat-treatment MDP: passes gymnasium's checker, shares the furnace's kinetics, rewards and
penalties point the right way, bad input is refused."""

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from sdl.env.heat_treatment import HeatTreatmentEnv
from sdl.env.twin import AlloyTwin, TwinConfig
from sdl.experiment import ProcessStep

SMALL_TWIN = {
    "grid": {"Al": {"low": 0.0, "high": 0.15, "points": 4}, "Co": {"low": 0.05, "high": 0.15, "points": 2},
             "Cr": {"low": 0.05, "high": 0.15, "points": 2}},
    "temperatures_k": [1000.0, 1100.0, 1300.0],
}
ALLOY = {"Al": 0.10, "Co": 0.10, "Cr": 0.10}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    twin = AlloyTwin(TwinConfig.model_validate(SMALL_TWIN), cache_path=tmp_path_factory.mktemp("c") / "cache.sqlite")
    return HeatTreatmentEnv(twin, temperatures_k=(1000.0, 1100.0, 1300.0), durations_s=(3600.0, 14400.0), max_steps=3)


def test_passes_the_gymnasium_env_checker(env):
    check_env(env, skip_render_check=True)
    assert env.action_space.n == 1 + 3 * 2


def test_transitions_are_the_furnace_kinetics(env):
    env.reset(seed=0, options={"composition": ALLOY})
    solutionise = 1 + 2 * 2 + 0  # 1300 K, 1 h
    age = 1 + 1 * 2 + 1          # 1100 K, 4 h
    assert env.describe_action(solutionise)["temperature_k"] == 1300.0
    env.step(solutionise)
    _, _, _, _, info = env.step(age)
    route = [ProcessStep(operation="solutionise", temperature_k=1300, duration_s=3600, quench_medium="water"),
             ProcessStep(operation="age", temperature_k=1100, duration_s=14400, quench_medium="water")]
    composition = {**ALLOY, "Ni": 1 - sum(ALLOY.values())}
    furnace = env.twin.properties([composition], route, phase_state="table")  # the MDP runs on the twin's table
    assert info["hardness_hv"] == pytest.approx(float(furnace.hardness_hv[0]), rel=1e-9)


def test_reward_signs(env):
    env.reset(seed=0, options={"composition": ALLOY})
    _, reward_stop, terminated, _, _ = env.step(0)
    assert terminated and reward_stop == 0.0  # stopping as cast costs nothing and gains nothing
    env.reset(seed=0, options={"composition": ALLOY})
    _, reward_age, _, _, info = env.step(1 + 1 * 2 + 1)  # age at 1100 K for 4 h: precipitates harden
    assert info["hardness_hv"] > 0 and reward_age > 0
    # the same hold for longer costs more energy: with a huge energy weight, the reward turns negative
    costly = HeatTreatmentEnv(env.twin, temperatures_k=(1100.0,), durations_s=(14400.0,), energy_weight=10.0)
    costly.reset(seed=0, options={"composition": ALLOY})
    assert costly.step(1)[1] < 0


def test_bad_input_is_refused(env):
    with pytest.raises(ValueError, match="outside the twin's tabulated"):
        HeatTreatmentEnv(env.twin, temperatures_k=(1600.0,))
    with pytest.raises(ValueError, match="lacks"):
        env.reset(options={"composition": {"Al": 0.1}})
    with pytest.raises(ValueError, match="not in 0.."):
        env.describe_action(99)


def test_episode_ends_after_the_step_budget_with_a_random_policy(env):
    env.reset(seed=3)
    rng = np.random.default_rng(3)
    for i in range(env.max_steps):
        _, _, terminated, truncated, _ = env.step(int(rng.integers(1, env.action_space.n)))
    assert truncated and not terminated
