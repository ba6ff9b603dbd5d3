"""Reports read back from a built model: parameter counts per component and effective hyperparameters.

The values come from the model and its optimizers, never from the config that was meant to set them, so a setting
that did not reach the code shows up as a deviation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stable_baselines3.common.noise import NormalActionNoise
from torch import nn

from sb3_carla_td3.errors import ConfigError

#: Reference sets; a tuple lists every value the source gives (the paper's start steps depend on the task).
REFERENCES: dict[str, dict[str, Any]] = {
    # Only what the TD3 paper states: Fujimoto, van Hoof, Meger, "Addressing Function Approximation Error in
    # Actor-Critic Methods", ICML 2018 (https://arxiv.org/abs/1802.09477). Section 5 and Table 3 (appendix): Adam at
    # 1e-3 for actor and critic, no regularization, batch 100 (mini-batches of N = 100), one update per env step,
    # tau 0.005, gamma 0.99, policy delay d = 2, target smoothing N(0, 0.2) clipped to (-0.5, 0.5), exploration
    # N(0, 0.1), a 1e6 replay buffer, and purely random actions for the first 10,000 steps on HalfCheetah and Ant
    # (1,000 elsewhere). The paper clips no gradients, so it gives no clip limits to compare with.
    "td3_paper": {
        "actor_lr": 1e-3,
        "critic_lr": 1e-3,
        "batch_size": 100,
        "gamma": 0.99,
        "tau": 0.005,
        "target_policy_noise": 0.2,
        "target_noise_clip": 0.5,
        "policy_delay": 2,
        "exploration_noise": 0.1,
        "buffer_size": 1_000_000,
        "learning_starts": (1_000, 10_000),
        "train_freq": "1 step",
        "gradient_steps": 1,
        "critic_layer_norm": False,
        "weight_decay": 0.0,
    },
    # Stable-Baselines3's TD3 constructor defaults (2.9): what a user of SB3 expects when passing nothing; TD3CNN's
    # own defaults differ where docs/results.md measured a reason (see TD3CNN's docstring).
    "sb3_td3": {
        "actor_lr": 1e-3,
        "critic_lr": 1e-3,
        "batch_size": 256,
        "gamma": 0.99,
        "tau": 0.005,
        "target_policy_noise": 0.2,
        "target_noise_clip": 0.5,
        "policy_delay": 2,
        "exploration_noise": 0.0,
        "buffer_size": 1_000_000,
        "learning_starts": 100,
        "train_freq": "1 step",
        "gradient_steps": 1,
        "critic_layer_norm": False,
        "actor_grad_clip": None,
        "critic_grad_clip": None,
        "weight_decay": 0.0,
        "preact_penalty": 0.0,
        "encoder": "separate",
    },
}


def _count(params: Any) -> int:
    return sum(p.numel() for p in params)


@dataclass
class Report:
    """A titled table; ``str()`` renders it as Markdown, ``rows`` keeps the values.

    :param title: heading line
    :param headers: column titles
    :param rows: one tuple of values per row
    """

    title: str
    headers: tuple[str, ...]
    rows: list[tuple[Any, ...]]

    def __str__(self) -> str:
        cells = [[_fmt(v) for v in row] for row in self.rows]
        lines = [self.title, "", "| " + " | ".join(self.headers) + " |", "|" + "|".join("---" for _ in self.headers) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """Rows keyed by their first column, each a dict of the other columns."""
        return {str(row[0]): dict(zip(self.headers[1:], row[1:], strict=True)) for row in self.rows}


def _fmt(value: Any) -> str:
    if isinstance(value, tuple):
        return " or ".join(_fmt(option) for option in value)
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def parameter_report(model: Any) -> Report:
    """Per-component parameter counts of a TD3/TD3CNN model, and what each optimizer steps.

    :param model: a TD3-family model with ``actor``, ``critic``, ``actor_target`` and ``critic_target``
    :return: rows (component, parameters, stepped by)
    """
    actor_params, critic_params = model.actor.optimizer.param_groups, model.critic.optimizer.param_groups
    actor_ids = {id(p) for g in actor_params for p in g["params"]}
    critic_ids = {id(p) for g in critic_params for p in g["params"]}

    def stepped_by(module: nn.Module) -> str:
        ids = {id(p) for p in module.parameters()}
        owners = [name for name, owned in (("actor optimizer", actor_ids), ("critic optimizer", critic_ids)) if ids & owned]
        return " + ".join(owners) or "none (Polyak target)"

    actor_cnn, critic_cnn = model.actor.features_extractor, model.critic.features_extractor
    critic_heads = [p for name, p in model.critic.named_parameters() if not name.startswith("features_extractor.")]
    shared = getattr(model.policy, "encoder", None)
    if shared is not None:
        encoders = [("shared encoder (no target copy, DrQ-v2)", _count(shared.parameters()), stepped_by(shared))]
    else:
        encoders = [
            ("actor CNN", _count(actor_cnn.parameters()), stepped_by(actor_cnn)),
            ("critic CNN", _count(critic_cnn.parameters()), stepped_by(critic_cnn)),
        ]
    rows: list[tuple[Any, ...]] = [
        *encoders,
        ("actor head", _count(model.actor.mu.parameters()), stepped_by(model.actor.mu)),
        ("critic heads", _count(critic_heads), "critic optimizer" if {id(p) for p in critic_heads} <= critic_ids else "NONE"),
        ("actor target (copy)", _count(model.actor_target.parameters()), stepped_by(model.actor_target)),
        ("critic target (copy)", _count(model.critic_target.parameters()), stepped_by(model.critic_target)),
        ("actor optimizer total", _count(p for g in actor_params for p in g["params"]), ""),
        ("critic optimizer total", _count(p for g in critic_params for p in g["params"]), ""),
    ]
    layout = "one critic-trained encoder, actor reads detached features" if shared is not None else "separate encoders"
    title = f"Parameters ({layout})"
    return Report(title, ("component", "parameters", "stepped by"), rows)


def effective_hyperparameters(model: Any) -> dict[str, Any]:
    """Hyperparameters as the built model and its optimizers hold them.

    :param model: a TD3-family model
    :return: name -> value
    """
    noise = model.action_noise
    if noise is None:
        exploration: Any = 0.0
    elif isinstance(noise, NormalActionNoise):
        sigmas = set(noise._sigma.tolist())
        exploration = sigmas.pop() if len(sigmas) == 1 else noise._sigma.tolist()
    else:
        exploration = type(noise).__name__
    decays = {g.get("weight_decay", 0.0) for opt in (model.actor.optimizer, model.critic.optimizer) for g in opt.param_groups}
    encoder = getattr(model.policy, "encoder", None) or model.critic.features_extractor
    cnn = getattr(encoder, "cnn", None)
    return {
        "actor_lr": model.actor.optimizer.param_groups[0]["lr"],
        "critic_lr": model.critic.optimizer.param_groups[0]["lr"],
        "batch_size": model.batch_size,
        "gamma": model.gamma,
        "tau": model.tau,
        "target_policy_noise": getattr(model, "target_policy_noise", None),
        "target_noise_clip": getattr(model, "target_noise_clip", None),
        "policy_delay": getattr(model, "policy_delay", None),
        "exploration_noise": exploration,
        "buffer_size": model.buffer_size,
        "learning_starts": model.learning_starts,
        "train_freq": f"{model.train_freq.frequency} {model.train_freq.unit.value}",
        "gradient_steps": model.gradient_steps,
        "critic_layer_norm": getattr(model.policy, "critic_layer_norm", False),
        "actor_grad_clip": getattr(model, "actor_grad_clip", None),
        "critic_grad_clip": getattr(model, "critic_grad_clip", None),
        "weight_decay": decays.pop() if len(decays) == 1 else sorted(decays),
        "preact_penalty": getattr(model, "preact_penalty", 0.0),
        "encoder": getattr(model, "encoder", "separate"),
        "cnn": getattr(encoder, "cnn_type", type(encoder).__name__),
        "rnn": getattr(encoder, "rnn_type", None),
        "frames": getattr(encoder, "frames", None),
        "image_features": getattr(encoder, "image_features_dim", None),
        "center_pixels": getattr(cnn, "center_pixels", False),
        "augment": getattr(model, "augment", None),
    }


def _same(value: Any, reference: Any) -> bool:
    if isinstance(reference, tuple):
        return any(_same(value, option) for option in reference)
    if isinstance(value, (int, float)) and isinstance(reference, (int, float)) and not isinstance(value, bool):
        return abs(value - reference) <= 1e-12 * max(1.0, abs(reference))
    return value == reference


def hyperparameter_report(model: Any, reference: str = "td3_paper", strict: bool = False) -> Report:
    """Compare the model's effective hyperparameters with a reference set.

    Works on any SB3 off-policy actor-critic (TD3CNN, TD3, DDPG, SAC, TQC): a setting the algorithm does not have
    (SAC's policy delay, say) reads None with status "-", not DIFFERS.

    :param model: an SB3 off-policy actor-critic model
    :param reference: a key of ``REFERENCES``
    :param strict: raise instead of reporting when a value deviates from the reference
    :return: rows (name, effective value, reference value, status "ok" / "DIFFERS" / "-")
    :raises ConfigError: in strict mode, listing every deviation
    """
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {sorted(REFERENCES)}, got {reference!r}")
    expected = REFERENCES[reference]
    rows = []
    for name, value in effective_hyperparameters(model).items():
        if name in expected and value is None and expected[name] is not None:
            rows.append((name, value, expected[name], "-"))  # the algorithm has no such setting
        elif name in expected:
            rows.append((name, value, expected[name], "ok" if _same(value, expected[name]) else "DIFFERS"))
        else:
            rows.append((name, value, "-", "-"))
    deviations = [f"{name}={value!r} (reference {ref!r})" for name, value, ref, status in rows if status == "DIFFERS"]
    if strict and deviations:
        raise ConfigError(f"hyperparameters deviate from {reference}: " + ", ".join(deviations))
    return Report(f"Hyperparameters (read back from the model) vs {reference}", ("name", "value", reference, "status"), rows)
