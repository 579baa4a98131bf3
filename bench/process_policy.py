"""Process-policy bench: a trained policy against the exhaustive optimum, the textbook route and a
random policy on held-out compositions, plus environment throughput beside RLlib's CartPole.

    sdl policy train configs/policy.yaml                 # writes runs/policy/heat_treatment_policy
    python bench/process_policy.py runs/policy/heat_treatment_policy --compositions 16

Figures printed (and written to RUN_DIR/bench.json, RUN_DIR/bench.png):
- return as a share of the optimum (sum over the held-out compositions), and final hardness;
- training wall time (from the run's training.json);
- environment steps per second, raw (``env.step`` with random actions) and sampled through an
  RLlib EnvRunner with the PPO module, for the heat-treatment MDP and CartPole-v1 in the same run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gymnasium
import numpy as np


def raw_steps_per_s(env: gymnasium.Env, seconds: float = 3.0) -> float:
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        _, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
        steps += 1
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - started)


def rllib_steps_per_s(env_name: str, env_config: dict, timesteps: int = 4000) -> float:
    """Env steps per second sampled by a local RLlib EnvRunner (PPO module, 8 vectorised envs)."""
    from ray.rllib.algorithms.ppo import PPOConfig

    config = (PPOConfig().environment(env_name, env_config=env_config).framework("torch")
              .env_runners(num_env_runners=0, num_envs_per_env_runner=8))
    algo = config.build_algo()
    try:
        runner = algo.env_runner
        runner.sample(num_timesteps=500)  # warm up
        started = time.perf_counter()
        runner.sample(num_timesteps=timesteps)
        return timesteps / (time.perf_counter() - started)
    finally:
        algo.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a run folder written by `sdl policy train`")
    parser.add_argument("--compositions", type=int, default=16, help="held-out compositions to score")
    parser.add_argument("--seed", type=int, default=1, help="held-out stream (training uses its own seed)")
    args = parser.parse_args()

    import ray
    from ray.tune.registry import register_env

    from sdl.agents.process_policy import ENV_NAME, ProcessPolicy, _env_creator, held_out_compositions, score_policy

    policy = ProcessPolicy(args.run_dir)
    compositions = held_out_compositions(policy.settings, args.compositions, seed=10_000 + args.seed)
    started = time.perf_counter()
    scores = score_policy(policy, compositions)
    scoring_s = time.perf_counter() - started
    training = json.loads((args.run_dir / "training.json").read_text())

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    register_env(ENV_NAME, _env_creator)
    env_config = policy.settings.model_dump(mode="json")
    throughput = {
        "heat_treatment_raw": raw_steps_per_s(policy.settings.make_env()),
        "cartpole_raw": raw_steps_per_s(gymnasium.make("CartPole-v1")),
        "heat_treatment_rllib": rllib_steps_per_s(ENV_NAME, env_config),
        "cartpole_rllib": rllib_steps_per_s("CartPole-v1", {}),
    }
    ray.shutdown()

    share = scores["share_of_optimum"]
    rows = scores["compositions"]
    hardness = np.array([r["policy_hardness_hv"] for r in rows])
    print(f"held-out compositions: {len(rows)} (scored in {scoring_s:.1f} s, exhaustive optimum included)")
    print("return as a share of the exhaustive optimum (sum over compositions):")
    for key in ("policy", "handed_out", "textbook", "random"):
        print(f"  {key:9s} {share[key]:7.1%}")
    per_composition = [r["policy"] / r["optimum"] for r in rows if r["optimum"] > 0.05]
    if per_composition:
        print(f"  policy, per composition with something to gain: median {np.median(per_composition):.1%}, "
              f"worst {min(per_composition):.1%}")
    beats = sum(r["policy"] >= r["textbook"] - 1e-9 for r in rows)
    below = sum(r["handed_out"] < r["textbook"] - 1e-9 for r in rows)
    print(f"policy >= textbook on {beats}/{len(rows)} compositions; handed out below textbook on {below}; "
          f"policy hardness median {np.median(hardness):.0f} HV")
    print(f"training: {training['training_seconds']:.0f} s for {training['curve'][-1]['env_steps']} env steps")
    print("environment steps per second (same run):")
    for key, value in throughput.items():
        print(f"  {key:22s} {value:10.0f}")
    out = {"scores": scores, "throughput_steps_per_s": throughput, "training_seconds": training["training_seconds"]}
    (args.run_dir / "bench.json").write_text(json.dumps(out, indent=2))
    plot(rows, args.run_dir / "bench.png")
    print(f"wrote {args.run_dir / 'bench.json'}, {args.run_dir / 'bench.png'}")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort([r["optimum"] for r in rows])
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(8, 4))
    for offset, (key, color) in zip((-0.3, -0.1, 0.1, 0.3), (("optimum", "k"), ("policy", "C1"),
                                                              ("textbook", "C2"), ("random", "C3"))):
        ax.bar(x + offset, [rows[i][key] for i in order], width=0.2, color=color, label=key)
    ax.set_xticks(x, [" ".join(f"{e}{v:.2f}" for e, v in rows[i]["composition"].items()) for i in order],
                  rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("episode return")
    ax.set_title("Heat-treatment routes on held-out compositions")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
