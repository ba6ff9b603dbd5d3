"""Reproduce the original system's Q explosion by its real cause, and show the library's monitors catch it.

    python examples/reproduce_original_failure.py [--seeds 0 1 2] [--timesteps 1500] [--out runs/reproduce]

Two models train side by side on the same env with the same seeds, hyperparameters and health callbacks:

- ``MiswiredTD3``, wired like the original system (``../shared/reference/original_system.md``, section 4): separate
  actor and critic CNNs, **no target encoders** (targets are computed from the online critic CNN's features), and
  an actor loss ``-Q1_head(actor_cnn(s), actor(actor_cnn(s)))`` that feeds actor-encoder features into a critic head
  trained only on critic-encoder features. The actor CNN is then free to move its features wherever Q1 extrapolates
  high, and the policy Q grows without bound while the replay Q stays small;
- ``TD3CNN`` in separate-encoder mode: the critic scores the actor's actions on its own features, and the targets
  carry their own encoders.

The original system's other settings are kept on both: one learning rate of 3e-4, Adam weight decay 1e-4, batch
256, clipping at 1.0 (actor + CNN) and 10.0 (critic + CNN). This file is an example, not part of the library API.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.utils import polyak_update
from torch.nn import functional as F

from sb3_carla_td3 import TD3CNN, load_config
from sb3_carla_td3.train_stats import q_statistics, saturation_share
from sb3_carla_td3.validation.recorder import MetricsRecorder
from sb3_carla_td3.validation.runner import health_callback, make_vec_env

REPO = Path(__file__).resolve().parent.parent


class MiswiredTD3(TD3CNN):
    """TD3CNN with the original system's wiring: no target encoders, actor-encoder features in the critic's Q1 head.

    Only :meth:`train` differs; gradient clipping, its verification and every logged statistic are TD3CNN's, so the
    monitors watch both models through exactly the same numbers. Use ``encoder="separate"``.
    """

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        self.policy.set_training_mode(True)
        self._update_learning_rates()
        started = time.perf_counter()
        critic_updates: list[dict[str, float]] = []
        actor_updates: list[dict[str, float]] = []
        actor_cnn, critic_cnn = self.actor.features_extractor, self.critic.features_extractor
        for _ in range(gradient_steps):
            self._n_updates += 1
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]

            with th.no_grad():
                # No target encoders: next_obs goes through the *online* critic CNN into the target heads.
                next_features = self.critic.extract_features(data.next_observations, critic_cnn)
                noise = (th.randn_like(data.actions) * self.target_policy_noise).clamp(
                    -self.target_noise_clip, self.target_noise_clip
                )
                next_actions = (self.actor_target.mu(next_features) + noise).clamp(-1, 1)
                next_input = th.cat([next_features, next_actions], dim=1)
                next_q = th.cat([q(next_input) for q in self.critic_target.q_networks], dim=1)
                target_q = data.rewards + (1 - data.dones) * self.gamma * next_q.min(dim=1, keepdim=True).values

            critic_features = self.critic.extract_features(data.observations, critic_cnn)
            critic_input = th.cat([critic_features, data.actions], dim=1)
            current_q = tuple(q(critic_input) for q in self.critic.q_networks)
            critic_loss = sum(F.mse_loss(q, target_q) for q in current_q)
            q_stats = q_statistics(current_q, target_q)
            critic_updates.append(self._optimizer_step(self._critic_params, critic_loss, self.critic_grad_clip, q_stats))

            if self._n_updates % self.policy_delay == 0:
                # The original's actor loss: Q1's head evaluated on features from the actor's own CNN.
                actor_features = self.actor.extract_features(data.observations, actor_cnn)
                policy_actions = self.actor.mu(actor_features)
                actor_q = self.critic.q_networks[0](th.cat([actor_features, policy_actions], dim=1))
                actor_loss = -actor_q.mean()
                stats = {"actor_q_mean": actor_q.mean(), "actor_saturation": saturation_share(policy_actions)}
                actor_updates.append(self._optimizer_step(self._actor_params, actor_loss, self.actor_grad_clip, stats))
                # Polyak on the heads only: the original had no target CNNs.
                heads = [p for q in self.critic.q_networks for p in q.parameters()]
                target_heads = [p for q in self.critic_target.q_networks for p in q.parameters()]
                polyak_update(heads, target_heads, self.tau)
                polyak_update(self.actor.mu.parameters(), self.actor_target.mu.parameters(), self.tau)

        seconds_per_update = (time.perf_counter() - started) / max(gradient_steps, 1)
        self._record_train_stats({"critic": critic_updates, "actor": actor_updates}, seconds_per_update)


def original_config(timesteps: int, image_size: int) -> Any:
    """The phase-1 config with the original system's TD3 settings (one lr 3e-4, batch 256, separate encoders)."""
    config = load_config(REPO / "configs" / "phase1_validation.yaml")
    config.env.options.image_size = image_size
    config.encoder.mode = "separate"
    config.td3.actor_lr = config.td3.critic_lr = 3e-4
    config.td3.batch_size = 256
    config.td3.learning_starts = 500
    config.run.total_timesteps = timesteps
    return config


def train_variant(model_class: type[TD3CNN], seed: int, timesteps: int, image_size: int) -> dict[str, Any]:
    """Train one model with the health callbacks; return when each check fired and the per-update Q history."""
    config = original_config(timesteps, image_size)
    env = make_vec_env(config, seed)
    kwargs = config.model_kwargs(n_actions=env.action_space.shape[0])
    kwargs["policy_kwargs"]["optimizer_kwargs"] = {"weight_decay": 1e-4}
    kwargs.update(device="cpu", seed=seed)
    model = model_class("CnnPolicy", env, **kwargs)
    health, recorder = health_callback(config), MetricsRecorder()
    started = time.perf_counter()
    model.learn(timesteps, callback=[health, recorder])
    seconds = time.perf_counter() - started
    verdicts = health.verdict()
    q = health.q_values
    bound = verdicts["q_bound"].threshold
    first_over = {}
    for factor in (1, 10):
        over = [u for u in recorder.updates if _q_abs(u) > factor * bound]
        first_over[f"{factor}x"] = int(over[0]["n_updates"]) if over else None
    return {
        "model": model_class.__name__,
        "seed": seed,
        "seconds": seconds,
        "updates": int(model._n_updates),
        "q_bound": bound,
        "q_abs_max": max((_q_abs(u) for u in recorder.updates), default=float("nan")),
        "replay_q_abs_max": max(max(abs(u["q_max"]), abs(u["q_min"])) for u in recorder.updates if "q_max" in u),
        "policy_q_final": next((u["actor_q_mean"] for u in reversed(recorder.updates) if "actor_q_mean" in u), None),
        "q_flagged_at_update": q.diverged_at_update,
        "q_flagged_at_step": q.diverged_at_step,
        "q_flag_reason": q.divergence_reason,
        "first_update_over_bound": first_over,
        "collapse_at_step": health.episodes.collapsed_at_step,
        "verdicts": {key: vars(value) for key, value in verdicts.items()},
        "history": [
            {"n_updates": u["n_updates"], "q_abs": _q_abs(u), "replay_q_abs": max(abs(u["q_max"]), abs(u["q_min"]))}
            for u in recorder.updates
            if "q_max" in u
        ],
        "episodes": recorder.episodes,
    }


def _q_abs(update: dict[str, float]) -> float:
    """The magnitude the Q monitor tests: replay Q extremes and the policy Q."""
    values = [update.get("q_max", 0.0), update.get("q_min", 0.0), update.get("actor_q_mean", 0.0)]
    return max(abs(v) for v in values)


def table(results: list[dict[str, Any]]) -> str:
    """One row per (model, seed): the bound, the largest Q, when the monitor fired, when Q passed 1x and 10x."""
    lines = [
        "| model | seed | updates | Q bound | max abs replay Q | max abs Q incl. policy Q | Q check fired at update "
        "| first update over 1x bound | over 10x bound | episode-length collapse | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        over = r["first_update_over_bound"]
        lines.append(
            f"| {r['model']} | {r['seed']} | {r['updates']} | {r['q_bound']:.4g} | {r['replay_q_abs_max']:.4g} "
            f"| {r['q_abs_max']:.4g} | {r['q_flagged_at_update'] if r['q_flagged_at_update'] is not None else 'never'} "
            f"| {over['1x'] if over['1x'] is not None else 'never'} | {over['10x'] if over['10x'] is not None else 'never'} "
            f"| {'step ' + str(r['collapse_at_step']) if r['collapse_at_step'] else 'none'} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path) -> Path:
    """Max abs Q over the bound against gradient updates, log scale, one line per (model, seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    for r in results:
        updates = [h["n_updates"] for h in r["history"]]
        ratio = np.array([h["q_abs"] for h in r["history"]]) / r["q_bound"]
        miswired = r["model"] == "MiswiredTD3"
        (line,) = ax.plot(
            updates,
            ratio,
            linewidth=1.6 if miswired else 0.6,
            alpha=1.0 if miswired else 0.6,
            label=f"{r['model']} seed {r['seed']}" + (" (policy Q)" if miswired else ""),
        )
        if miswired:  # the paradox of the original logs: the replay Q stays small while the policy Q explodes
            replay = np.array([h["replay_q_abs"] for h in r["history"]]) / r["q_bound"]
            ax.plot(
                updates, replay, ":", color=line.get_color(), linewidth=1.0, label=f"{r['model']} seed {r['seed']} replay Q"
            )
        if r["q_flagged_at_update"] is not None:
            ax.axvline(r["q_flagged_at_update"], color=line.get_color(), alpha=0.5, linestyle="-.")
    ax.axhline(1.0, color="red", linestyle="--", linewidth=1, label="bound 1.5 max|r| / (1 - gamma)")
    ax.axhline(10.0, color="black", linestyle="--", linewidth=1, label="10x the bound")
    ax.set_yscale("log")
    ax.set_xlabel("gradient updates")
    ax.set_ylabel("max |Q| (replay and policy) / bound")
    ax.set_title("Q-values: original wiring vs TD3CNN (dash-dot: the Q check fired)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--timesteps", type=int, default=1500, help="env steps per run (500 random, then 1 update/step)")
    parser.add_argument("--image-size", type=int, default=36, help="frame side in pixels (36 is NatureCNN's minimum)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=Path("runs/reproduce"))
    parser.add_argument("--replot", action="store_true", help="redraw the table and figure from OUT/results.json")
    args = parser.parse_args(argv)
    if args.replot:
        results = json.loads((args.out / "results.json").read_text())
        print(table(results))
        print(f"wrote {plot(results, args.out / 'q_explosion.png')}")
        return 0
    if args.threads is not None:
        th.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        for model_class in (MiswiredTD3, TD3CNN):
            results.append(train_variant(model_class, seed, args.timesteps, args.image_size))
            print(table(results[-1:]).splitlines()[-1], flush=True)
    (args.out / "results.json").write_text(json.dumps(results))
    print(table(results))
    print(f"wrote {plot(results, args.out / 'q_explosion.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
