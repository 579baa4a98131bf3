"""Process-planning policy: RLlib PPO (new API stack) on the heat-treatment MDP, and its use.

One policy serves every composition: the composition is part of the observation and each episode
starts from a composition drawn from the configured bounds, so the network learns a map from
alloy (and current microstructure) to the next hold. Training writes, in the run directory, the
RLlib checkpoint (``checkpoint/``, for resuming and inspection), the policy itself exported as
plain arrays (``policy.npz``: the actor network's weights and the env settings it was trained on,
about 90 kB), a learning curve (``learning_curve.png``) and the per-iteration figures
(``training.json``).

:class:`ProcessPolicy` loads an exported policy with numpy alone (no Ray, no RLlib checkpoint
machinery: a furnace PC can run it) and turns a composition into a validated route: greedy actions
rolled out in the MDP (no temperature scatter), each hold becoming a :class:`ProcessStep` with its
water quench. sdl ships one (:data:`SHIPPED_POLICY`, trained by ``sdl policy train
configs/policy.yaml``), which the demo's process planner uses by default.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import Field, model_validator

from sdl.env.heat_treatment import (
    DEFAULT_DURATIONS_S,
    DEFAULT_TEMPERATURES_K,
    HeatTreatmentEnv,
    optimal_actions,
    rollout,
    textbook_actions,
)
from sdl.env.twin import AlloyTwin, TwinConfig
from sdl.experiment import ProcessStep
from sdl.settings import Section, load_yaml

ENV_NAME = "sdl-heat-treatment"
SETTINGS_FILE = "sdl_policy.json"
POLICY_FILE = "policy.npz"
POLICY_FORMAT = 1
# Reproduce with `sdl policy train configs/policy.yaml` and copy runs/policy/heat_treatment_policy/policy.npz here.
SHIPPED_POLICY = Path(__file__).resolve().parent / "policies" / "heat_treatment.npz"


class HeatTreatmentSettings(Section):
    """The MDP the policy is trained on (see :class:`sdl.env.heat_treatment.HeatTreatmentEnv`)."""

    composition: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {"Al": (0.02, 0.145), "Co": (0.0, 0.185), "Cr": (0.0, 0.185)},
        description="free element -> (low, high) mole fraction the episodes draw from (the campaign's space)")
    temperatures_k: list[float] = Field(default_factory=lambda: list(DEFAULT_TEMPERATURES_K), min_length=1)
    durations_s: list[float] = Field(default_factory=lambda: list(DEFAULT_DURATIONS_S), min_length=1)
    max_steps: int = Field(default=4, ge=1, le=8)
    energy_weight: float = Field(default=0.002, ge=0, description="per 1000 K x 1 h of hold")
    step_penalty: float = Field(default=0.02, ge=0)
    brittle_penalty: float = Field(default=5.0, ge=0, description="per unit brittle-phase fraction at the last hold")
    temperature_scatter_k: float = Field(default=0.0, ge=0, description="furnace scatter during training")
    twin: TwinConfig = Field(default_factory=TwinConfig, description="the twin whose kinetics the MDP runs")
    cache_path: str | None = Field(default=None, description="CALPHAD cache (default: ~/.cache/sdl)")

    @model_validator(mode="after")
    def _bounds(self) -> HeatTreatmentSettings:
        bad = {e: b for e, b in self.composition.items() if not 0.0 <= b[0] <= b[1] <= 1.0}
        if bad:
            raise ValueError(f"composition bounds must satisfy 0 <= low <= high <= 1; got {bad}")
        return self

    def make_env(self, twin=None) -> HeatTreatmentEnv:
        from sdl.env.calphad import default_cache_path

        twin = twin or AlloyTwin(self.twin, cache_path=self.cache_path or default_cache_path())
        unknown = sorted(set(self.composition) - set(twin.free_elements))
        if unknown:
            raise ValueError(f"composition bounds name {unknown}; the twin's free elements are {list(twin.free_elements)}")
        return HeatTreatmentEnv(twin, composition_bounds=self.composition, temperatures_k=self.temperatures_k,
                                durations_s=self.durations_s, max_steps=self.max_steps,
                                energy_weight=self.energy_weight, step_penalty=self.step_penalty,
                                brittle_penalty=self.brittle_penalty,
                                temperature_scatter_k=self.temperature_scatter_k)


class PpoSettings(Section):
    """RLlib PPO hyper-parameters (new API stack)."""

    iterations: int = Field(default=40, ge=1, le=10000)
    train_batch_size: int = Field(default=4000, ge=64, description="env steps per iteration")
    minibatch_size: int = Field(default=500, ge=16)
    num_epochs: int = Field(default=8, ge=1)
    lr: float = Field(default=5e-4, gt=0)
    gamma: float = Field(default=1.0, gt=0, le=1, description="1: the undiscounted return the optimum is scored by")
    entropy_coeff: float = Field(default=0.003, ge=0)
    hidden: list[int] = Field(default_factory=lambda: [128, 128], min_length=1)
    num_env_runners: int = Field(default=1, ge=0)
    envs_per_runner: int = Field(default=8, ge=1)

    @model_validator(mode="after")
    def _sizes(self) -> PpoSettings:
        if self.minibatch_size > self.train_batch_size:
            raise ValueError(f"minibatch_size {self.minibatch_size} exceeds train_batch_size {self.train_batch_size}")
        return self


class PolicyConfig(Section):
    """``sdl policy train CONFIG``."""

    name: str = Field(default="heat_treatment_policy", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    seed: int = 0
    env: HeatTreatmentSettings = HeatTreatmentSettings()
    ppo: PpoSettings = PpoSettings()
    held_out: int = Field(default=8, ge=0, le=1000, description="compositions scored against the exhaustive optimum")
    out: Path | None = Field(default=None, description="run directory (default: runs/policy/<name>)")


def load_policy_config(path: str | Path) -> PolicyConfig:
    return load_yaml(PolicyConfig, path, "policy config")


# -- training ------------------------------------------------------------------------------------


def _env_creator(env_config: dict) -> HeatTreatmentEnv:
    return HeatTreatmentSettings.model_validate(env_config).make_env()


def build_algorithm(config: PolicyConfig):
    """The RLlib PPO algorithm for this config (Ray must be initialised)."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.tune.registry import register_env

    register_env(ENV_NAME, _env_creator)
    p = config.ppo
    algo_config = (
        PPOConfig()
        .environment(ENV_NAME, env_config=config.env.model_dump(mode="json"))
        .framework("torch")
        .env_runners(num_env_runners=p.num_env_runners, num_envs_per_env_runner=p.envs_per_runner)
        .training(lr=p.lr, gamma=p.gamma, train_batch_size_per_learner=p.train_batch_size,
                  minibatch_size=p.minibatch_size, num_epochs=p.num_epochs, entropy_coeff=p.entropy_coeff)
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=list(p.hidden)))
        .debugging(seed=config.seed)
    )
    return algo_config.build_algo()


def held_out_compositions(settings: HeatTreatmentSettings, n: int, *, seed: int) -> list[dict[str, float]]:
    """Compositions the policy never trains on by construction (a separate seeded stream)."""
    rng = np.random.default_rng([seed, 424242])
    return [{e: float(rng.uniform(lo, hi)) for e, (lo, hi) in settings.composition.items()} for _ in range(n)]


class TrainingStalled(RuntimeError):
    """PPO stopped learning from anything: an iteration sampled no environment steps, or its return is NaN."""


def check_iteration(row: dict, previous: dict | None) -> None:
    """Refuse an iteration that sampled nothing (RLlib's "No samples returned from remote workers") or
    whose mean return is not a number; a policy trained on nothing must not be saved as if it learned."""
    sampled = row["env_steps"] - (previous["env_steps"] if previous else 0)
    if sampled <= 0:
        raise TrainingStalled(f"PPO iteration {row['iteration']} sampled no environment steps (the env runners "
                              "returned nothing); training stopped, no checkpoint written")
    if previous is not None and not math.isfinite(row["episode_return_mean"]):
        raise TrainingStalled(f"PPO iteration {row['iteration']}: the mean episode return is "
                              f"{row['episode_return_mean']}; training stopped, no checkpoint written")


def train_policy(config: PolicyConfig, out: Path, *, progress: Callable[[int, dict], None] | None = None) -> dict:
    """Train, checkpoint, score on held-out compositions and plot; returns the summary (also in training.json).

    Raises :class:`TrainingStalled` (before any checkpoint) if an iteration samples nothing or returns NaN."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    algo = build_algorithm(config)
    curve: list[dict] = []
    try:
        for i in range(config.ppo.iterations):
            result = algo.train()
            runners = result.get("env_runners", {})
            row = {"iteration": i + 1, "seconds": time.perf_counter() - started,
                   "env_steps": int(runners.get("num_env_steps_sampled_lifetime", 0)),
                   "episode_return_mean": float(runners.get("episode_return_mean", math.nan))}
            check_iteration(row, curve[-1] if curve else None)
            curve.append(row)
            if progress is not None:
                progress(i + 1, row)
        checkpoint = out / "checkpoint"
        algo.save_to_path(str(checkpoint.resolve()))
        metadata = {"env": config.env.model_dump(mode="json"), "name": config.name, "seed": config.seed}
        (checkpoint / SETTINGS_FILE).write_text(json.dumps(metadata, indent=2))
        export_policy(checkpoint, out / POLICY_FILE)
    finally:
        algo.stop()
    training_s = time.perf_counter() - started
    policy = ProcessPolicy(out / POLICY_FILE)
    scores = score_policy(policy, held_out_compositions(config.env, config.held_out, seed=config.seed))
    summary = {"name": config.name, "training_seconds": training_s, "checkpoint": str(checkpoint),
               "policy": str(out / POLICY_FILE), "curve": curve, "held_out": scores}
    (out / "training.json").write_text(json.dumps(summary, indent=2))
    plot_learning_curve(curve, scores, out / "learning_curve.png")
    return summary


def export_policy(checkpoint: str | Path, path: str | Path) -> Path:
    """Export the actor of an RLlib checkpoint written by :func:`train_policy` to a policy file
    (:func:`save_policy`), checked to reproduce the module's logits on its own env's observations."""
    from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_LEARNER_GROUP, COMPONENT_RL_MODULE, DEFAULT_MODULE_ID
    from ray.rllib.core.rl_module.rl_module import RLModule

    checkpoint = Path(checkpoint)
    settings_file = checkpoint / SETTINGS_FILE
    module_dir = checkpoint / COMPONENT_LEARNER_GROUP / COMPONENT_LEARNER / COMPONENT_RL_MODULE / DEFAULT_MODULE_ID
    if not settings_file.is_file() or not module_dir.is_dir():
        raise FileNotFoundError(f"{checkpoint} is not a policy checkpoint (no {SETTINGS_FILE} or RL module)")
    metadata = json.loads(settings_file.read_text())
    module = RLModule.from_checkpoint(str(module_dir.resolve()))  # RLlib reads URIs: absolute only
    env = HeatTreatmentSettings.model_validate(metadata["env"]).make_env()
    rng = np.random.default_rng(0)
    observations = []
    for _ in range(32):  # observations the policy really meets: random rollouts of its own env
        observation, _ = env.reset(seed=int(rng.integers(1 << 30)))
        done = False
        while not done:
            observations.append(observation)
            observation, _, terminated, truncated, _ = env.step(int(rng.integers(1, env.action_space.n)))
            done = terminated or truncated
    network = PolicyNetwork.from_rl_module(module, check_observations=np.array(observations))
    return save_policy(path, network, metadata)


def score_policy(policy: ProcessPolicy, compositions: list[dict[str, float]]) -> dict:
    """Returns of the policy, of what the process planner hands out (the best of the policy's route, the
    textbook route and as cast: :func:`choose_route`), of the textbook route, of a uniformly random
    policy and the exhaustive optimum, per composition and summed."""
    env = policy.env
    rng = np.random.default_rng(0)
    rows = []
    for composition in compositions:
        _, optimum = optimal_actions(env, composition)
        steps, hardness, learned = policy.route(composition)
        _, _, textbook = policy.textbook(composition)
        _, random_return, _ = rollout(env, composition, lambda _obs: int(rng.integers(env.action_space.n)))
        handed_out = {"policy": learned, "textbook": textbook, "as_cast": 0.0}[choose_route(steps, learned, textbook)]
        rows.append({"composition": composition, "optimum": optimum, "policy": learned, "handed_out": handed_out,
                     "textbook": textbook, "random": random_return, "policy_hardness_hv": hardness})
    total = {k: float(sum(r[k] for r in rows)) for k in ("optimum", "policy", "handed_out", "textbook", "random")}
    share = {k: (total[k] / total["optimum"] if total["optimum"] > 0 else math.nan) for k in total}
    return {"compositions": rows, "total_return": total, "share_of_optimum": share}


def plot_learning_curve(curve: list[dict], scores: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    steps = [r["env_steps"] for r in curve]
    returns = np.array([r["episode_return_mean"] for r in curve], dtype=float)
    ax.plot(steps, returns, marker="o", ms=2, lw=0.8, alpha=0.5, label="PPO, mean episode return (sampling)")
    if len(returns) >= 10:  # each iteration draws other compositions: the trend is the rolling mean
        rolling = np.convolve(np.nan_to_num(returns), np.ones(10) / 10, mode="valid")
        ax.plot(steps[9:], rolling, color="C0", lw=2, label="rolling mean, 10 iterations")
    n = len(scores.get("compositions", []))
    if n:
        for key, color, style in (("optimum", "k", "--"), ("textbook", "C2", ":"), ("random", "C3", ":")):
            ax.axhline(scores["total_return"][key] / n, ls=style, color=color, label=f"{key} (held-out mean)")
        ax.plot([steps[-1]], [scores["total_return"]["policy"] / n], "C1*", ms=12, label="policy, greedy (held-out mean)")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return (hardness gain / 100 HV - costs)")
    ax.set_title("Heat-treatment policy: learning curve")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- the exported policy ---------------------------------------------------------------------------

# Activations RLlib's default MLPs use, applied to numpy arrays.
ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "linear": lambda x: x,
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0.0),
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
}


class PolicyNetwork:
    """The actor of a trained PPO module as plain arrays: dense layers, each followed by its activation.

    Written by hand because it is three matrix products: shipping it as arrays keeps a trained policy
    loadable (and auditable) without Ray, RLlib or pickle."""

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray, str]]) -> None:
        if not layers:
            raise ValueError("a policy network needs at least one layer")
        for k, (w, b, activation) in enumerate(layers):
            if activation not in ACTIVATIONS:
                raise ValueError(f"layer {k}: activation {activation!r} is not one of {sorted(ACTIVATIONS)}")
            if w.ndim != 2 or b.shape != (w.shape[0],):
                raise ValueError(f"layer {k}: weights {w.shape} and bias {b.shape} do not form a dense layer")
            if k and w.shape[1] != layers[k - 1][0].shape[0]:
                raise ValueError(f"layer {k} takes {w.shape[1]} inputs; layer {k - 1} gives {layers[k - 1][0].shape[0]}")
        self.layers = [(np.asarray(w, np.float64), np.asarray(b, np.float64), a) for w, b, a in layers]

    @property
    def inputs(self) -> int:
        return self.layers[0][0].shape[1]

    @property
    def outputs(self) -> int:
        return self.layers[-1][0].shape[0]

    def logits(self, observations: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(observations, np.float64))
        for w, b, activation in self.layers:
            x = ACTIVATIONS[activation](x @ w.T + b)
        return x

    @classmethod
    def from_rl_module(cls, module, *, check_observations: np.ndarray) -> PolicyNetwork:
        """The actor path of RLlib's default PPO torch module (encoder, then the pi head), checked to give
        the module's own logits on ``check_observations``."""
        import torch
        from torch import nn

        names = {nn.Tanh: "tanh", nn.ReLU: "relu", nn.SiLU: "silu", nn.ELU: "elu", nn.Identity: "linear"}
        encoder = module.encoder
        actor = getattr(encoder, "actor_encoder", None) or getattr(encoder, "encoder", None) or encoder
        layers: list[list] = []
        for part in (actor, module.pi):
            for sub in part.modules():
                if isinstance(sub, nn.Linear):
                    layers.append([sub.weight.detach().double().numpy(), sub.bias.detach().double().numpy(), "linear"])
                elif type(sub) in names and layers and type(sub) is not nn.Identity:
                    layers[-1][2] = names[type(sub)]
                elif isinstance(sub, (nn.LayerNorm, nn.Dropout, nn.Conv2d, nn.LSTM)):
                    raise ValueError(f"cannot export a policy with {type(sub).__name__} layers")
        network = cls([tuple(layer) for layer in layers])
        with torch.no_grad():
            batch = {"obs": torch.as_tensor(np.asarray(check_observations, np.float32))}
            expected = module.forward_inference(batch)["action_dist_inputs"].double().numpy()
        if not np.allclose(network.logits(check_observations), expected, atol=1e-4):
            raise ValueError("the exported network does not reproduce the RL module's logits; "
                             "its architecture is not a plain MLP encoder + head")
        return network


def save_policy(path: str | Path, network: PolicyNetwork, metadata: dict) -> Path:
    """Write the network and its metadata (the env settings it was trained on, name, seed) as one .npz."""
    arrays = {"metadata": np.array(json.dumps({**metadata, "format": POLICY_FORMAT,
                                                 "activations": [a for _, _, a in network.layers]}))}
    for k, (w, b, _) in enumerate(network.layers):
        arrays[f"weight_{k}"] = w.astype(np.float32)
        arrays[f"bias_{k}"] = b.astype(np.float32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        np.savez_compressed(f, **arrays)
    return path


def load_policy_file(path: str | Path) -> tuple[PolicyNetwork, dict]:
    """(network, metadata) from a file :func:`save_policy` wrote; a clear ValueError for anything else."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as arrays:
            metadata = json.loads(str(arrays["metadata"]))
            activations = metadata["activations"]
            layers = [(arrays[f"weight_{k}"], arrays[f"bias_{k}"], a) for k, a in enumerate(activations)]
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path} is not a policy file written by `sdl policy train` ({e})") from None
    if metadata.get("format") != POLICY_FORMAT:
        raise ValueError(f"{path} is policy format {metadata.get('format')}; this sdl reads format {POLICY_FORMAT}")
    return PolicyNetwork(layers), metadata


def policy_path(path: str | Path) -> Path:
    """The policy file a setting names: the file itself, or a training run directory holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / POLICY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no policy at {path}; train one with `sdl policy train CONFIG` (it writes "
                                f"RUN_DIR/{POLICY_FILE})")
    return path


def trained_settings(path: str | Path) -> HeatTreatmentSettings:
    """The env settings a policy was trained on, read without building its twin (config-load checks)."""
    _, metadata = load_policy_file(policy_path(path))
    return HeatTreatmentSettings.model_validate(metadata["env"])


# -- inference -----------------------------------------------------------------------------------


class ProcessPolicy:
    """A trained policy, loaded from the file (or run directory) :func:`train_policy` writes."""

    def __init__(self, path: str | Path, *, twin=None) -> None:
        self.path = policy_path(path)
        self.network, self.metadata = load_policy_file(self.path)
        self.settings = HeatTreatmentSettings.model_validate(self.metadata["env"])
        self.env = self.settings.make_env(twin)
        if (self.network.inputs, self.network.outputs) != (self.env.observation_space.shape[0], self.env.action_space.n):
            raise ValueError(f"{self.path}: the network maps {self.network.inputs} observations to "
                             f"{self.network.outputs} actions; its env has {self.env.observation_space.shape[0]} "
                             f"and {self.env.action_space.n}")

    def act(self, observation: np.ndarray) -> int:
        """The greedy action (highest logit) for one observation."""
        return int(np.argmax(self.network.logits(np.asarray(observation, np.float32))[0]))

    def route(self, composition: dict[str, float]) -> tuple[list[ProcessStep], float, float]:
        """(steps, expected hardness HV, expected return) for a composition (free elements; others ignored)."""
        actions, total, hardness = rollout(self.env, self._free(composition), self.act)
        return actions_to_steps(self.env, actions), hardness, total

    def textbook(self, composition: dict[str, float]) -> tuple[list[ProcessStep], float, float]:
        """The same for the textbook route on the policy's action grid, by the same kinetics: what the
        policy must beat to be handed out."""
        book = iter(textbook_actions(self.env))
        actions, total, hardness = rollout(self.env, self._free(composition), lambda _observation: next(book))
        return actions_to_steps(self.env, actions), hardness, total

    def as_cast(self, composition: dict[str, float]) -> float:
        """Hardness of the untreated alloy (return 0: nothing gained, nothing spent)."""
        _, info = self.env.reset(options={"composition": self._free(composition)})
        return float(info["hardness_hv"])

    def _free(self, composition: dict[str, float]) -> dict[str, float]:
        free = {e: float(composition[e]) for e in self.env.free_elements if e in composition}
        missing = [e for e in self.env.free_elements if e not in free]
        if missing:
            raise ValueError(f"composition lacks {missing}; the policy was trained on {list(self.env.free_elements)}")
        return free


def choose_route(policy_steps: list[ProcessStep], policy_return: float, textbook_return: float) -> str:
    """Which option to hand out: ``policy`` if its route is at least as good as the textbook's and as
    leaving the alloy as cast (return 0), else ``textbook`` if that beats as cast, else ``as_cast``."""
    if policy_steps and policy_return >= max(textbook_return, 0.0):
        return "policy"
    return "textbook" if textbook_return > 0.0 else "as_cast"


def actions_to_steps(env: HeatTreatmentEnv, actions: list[int]) -> list[ProcessStep]:
    steps = []
    for action in actions:
        described = env.describe_action(action)
        if described["operation"] == "stop":
            break
        steps.append(ProcessStep.model_validate(described))
    return steps
