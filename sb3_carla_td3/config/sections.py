"""The run config's sections: one typed dataclass per YAML section (``env``, ``encoder``, ``td3``, ``run``,
``monitor``), each field documented and range-checked in ``__post_init__``, and :class:`RunConfig`, the whole run, which
turns them into TD3CNN's arguments."""

from __future__ import annotations

import dataclasses
import importlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import yaml
from stable_baselines3.common.noise import ActionNoise, NormalActionNoise

from sb3_carla_td3.errors import ConfigError
from sb3_carla_td3.noise import LinearDecayNormalNoise

#: The environments a config's ``env.name`` can name, and the dataclass holding their options.
ENV_CONFIG_CLASSES: dict[str, str] = {
    "carracing": "sb3_carla_td3.envs.carracing_config:CarRacingConfig",
    "carla": "sb3_carla_td3.envs.carla.config:CarlaConfig",
}


def _check(condition: bool, name: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ConfigError(f"{name}={value!r} is out of range: allowed {allowed}")


@dataclass
class TD3Config:
    """The ``td3:`` section: TD3CNN's constructor arguments. SB3 names, plus the seed plan's aliases (``ALIASES``)."""

    ALIASES: ClassVar[dict[str, str]] = {
        "start_steps": "learning_starts",
        "policy_noise": "target_policy_noise",
        "noise_clip": "target_noise_clip",
        "discount": "gamma",
        "policy_freq": "policy_delay",
    }

    learning_rate: float = 1e-3
    """Default learning rate of both optimizers (Adam)."""
    actor_lr: float | None = None
    """Actor (head + CNN) learning rate; null: learning_rate."""
    critic_lr: float | None = None
    """Critic (heads + CNN) learning rate; null: learning_rate."""
    batch_size: int = 100
    """Minibatch size per gradient step."""
    buffer_size: int = 1_000_000
    """Replay buffer capacity, in transitions."""
    learning_starts: int = 1000
    """Env steps of uniform random actions before the first update (alias: start_steps)."""
    gamma: float = 0.99
    """Discount factor in (0, 1] (alias: discount)."""
    tau: float = 0.005
    """Polyak coefficient of the targets, encoders included, in (0, 1]."""
    policy_delay: int = 2
    """Critic updates per actor/target update (alias: policy_freq)."""
    target_policy_noise: float = 0.2
    """Std of the target-action smoothing noise (alias: policy_noise)."""
    target_noise_clip: float = 0.5
    """Clip of the smoothing noise (alias: noise_clip)."""
    exploration_noise: float = 0.1
    """Std of the Gaussian exploration noise added to actions in [-1, 1]; 0 disables it."""
    exploration_noise_final: float | None = None
    """Std the exploration noise decays to, linearly (DrQ-v2); null: constant exploration_noise."""
    exploration_noise_decay_steps: int = 100_000
    """Env steps (after learning_starts) over which the noise std decays to exploration_noise_final."""
    preact_penalty: float = 0.0
    """Weight of mean(u^2), u the actor's pre-tanh output, in the actor loss; keeps it off +-1 (0: off)."""
    augment: str | None = None
    """Replay image augmentation: shift (DrQ random shift, obs and next obs alike) or null (off)."""
    augment_pad: int = 4
    """Largest random shift in pixels (DrQ-v2: 4 at 84 px)."""
    n_steps: int = 1
    """n-step TD targets (SB3's NStepReplayBuffer arithmetic; frame stacks through this library's buffers); 1: plain TD."""
    train_freq: int = 1
    """Env steps between training calls."""
    gradient_steps: int = 1
    """Gradient steps per training call (-1: as many as env steps collected)."""
    actor_grad_clip: float | None = 1.0
    """Limit on the global L2 norm of all actor gradients (head + CNN); null disables clipping."""
    critic_grad_clip: float | None = 10.0
    """Limit on the global L2 norm of all critic gradients (heads + CNN); null disables clipping."""
    clip_check: str = "raise"
    """What a post-clip norm above its limit does: raise, warn or off."""
    nonfinite_grads: str = "skip"
    """What a NaN/inf loss or gradient does: skip the step (logged) or raise."""
    replay_buffer: str = "auto"
    """auto (frame-deduplicating buffer for frame stacks), frame_stack, or sb3 (SB3's default buffer)."""

    def __post_init__(self) -> None:
        for name in ("learning_rate", "actor_lr", "critic_lr"):
            value = getattr(self, name)
            if value is not None:
                _check(value > 0, name, value, "> 0")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        _check(self.buffer_size >= self.batch_size, "buffer_size", self.buffer_size, f">= batch_size ({self.batch_size})")
        _check(self.learning_starts >= 0, "learning_starts", self.learning_starts, ">= 0")
        _check(0 < self.gamma <= 1, "gamma", self.gamma, "(0, 1]")
        _check(0 < self.tau <= 1, "tau", self.tau, "(0, 1]")
        _check(self.policy_delay >= 1, "policy_delay", self.policy_delay, ">= 1")
        _check(self.target_policy_noise >= 0, "target_policy_noise", self.target_policy_noise, ">= 0")
        _check(self.target_noise_clip >= 0, "target_noise_clip", self.target_noise_clip, ">= 0")
        _check(self.exploration_noise >= 0, "exploration_noise", self.exploration_noise, ">= 0")
        final = self.exploration_noise_final
        _check(final is None or final >= 0, "exploration_noise_final", final, ">= 0 or null")
        steps = self.exploration_noise_decay_steps
        _check(steps >= 1, "exploration_noise_decay_steps", steps, ">= 1")
        _check(self.preact_penalty >= 0, "preact_penalty", self.preact_penalty, ">= 0 (0: off)")
        _check(self.augment in (None, "shift"), "augment", self.augment, "shift, null")
        _check(self.augment_pad >= 1, "augment_pad", self.augment_pad, ">= 1")
        _check(self.n_steps >= 1, "n_steps", self.n_steps, ">= 1")
        _check(self.train_freq >= 1, "train_freq", self.train_freq, ">= 1")
        _check(self.gradient_steps >= 1 or self.gradient_steps == -1, "gradient_steps", self.gradient_steps, ">= 1 or -1")
        for name in ("actor_grad_clip", "critic_grad_clip"):
            value = getattr(self, name)
            if value is not None:
                _check(value > 0, name, value, "> 0, or null to disable clipping")
        _check(self.clip_check in ("raise", "warn", "off"), "clip_check", self.clip_check, "raise, warn, off")
        _check(self.nonfinite_grads in ("skip", "raise"), "nonfinite_grads", self.nonfinite_grads, "skip, raise")
        buffers = ("auto", "frame_stack", "sb3")
        _check(self.replay_buffer in buffers, "replay_buffer", self.replay_buffer, ", ".join(buffers))


@dataclass
class EncoderConfig:
    """The ``encoder:`` section: the CnnGruExtractor and network sizes."""

    mode: str = "separate"
    """separate (actor and critic own an encoder each, SB3 layout) or shared (one encoder trained by the critic)."""
    cnn: str = "pooled"
    """pooled (the seed's Task 6 NatureCNN with max-pooling) or nature (DQN NatureCNN, far cheaper)."""
    rnn: str | None = "gru"
    """gru, lstm, or null (one CNN over the stacked channels)."""
    cnn_features: int = 512
    """Output size of the per-frame CNN."""
    rnn_hidden: int = 48
    """Hidden size of the GRU/LSTM over frames."""
    frames: int | None = None
    """Frames in the image stack; null: taken from the environment."""
    net_arch: list[int] = field(default_factory=lambda: [256, 256])
    """Hidden layers of the actor and critic heads."""
    critic_layer_norm: bool = False
    """LayerNorm after each hidden layer of both critics: what keeps td3.gradient_steps > td3.train_freq stable."""
    vector_mlp: list[int] | None = None
    """Hidden layers applied to the vector observation before concatenation; null: concatenate as is."""
    trunk: int | None = None
    """Size of DrQ-v2's bounded image-feature trunk (Linear -> LayerNorm -> tanh); null: none."""
    center_pixels: bool = False
    """Feed the CNN image - 0.5 (pixels centred at 0, DrQ-v2); keeps first-layer ReLUs alive under Adam."""

    def __post_init__(self) -> None:
        _check(self.mode in ("separate", "shared"), "mode", self.mode, "separate, shared")
        _check(self.cnn in ("pooled", "nature"), "cnn", self.cnn, "pooled, nature")
        _check(self.rnn in ("gru", "lstm", None), "rnn", self.rnn, "gru, lstm, null")
        _check(self.cnn_features >= 1, "cnn_features", self.cnn_features, ">= 1")
        _check(self.rnn_hidden >= 1, "rnn_hidden", self.rnn_hidden, ">= 1")
        _check(self.frames is None or self.frames >= 1, "frames", self.frames, ">= 1 or null")
        _check(all(n >= 1 for n in self.net_arch), "net_arch", self.net_arch, "positive layer sizes")
        _check(self.trunk is None or self.trunk >= 1, "trunk", self.trunk, ">= 1 or null")


@dataclass
class RunSettings:
    """The ``run:`` section: budget, seed, device, evaluation, checkpoints and output."""

    total_timesteps: int = 5000
    """Env steps to train for."""
    seed: int = 0
    """Seed of the env, the networks and the exploration noise."""
    device: str = "auto"
    """auto, cpu or cuda."""
    threads: int | None = None
    """torch CPU threads (null: torch's default, one per core); 1 avoids OpenMP thrashing on a busy machine."""
    eval_freq: int = 5000
    """Env steps between evaluations; 0 disables them."""
    eval_episodes: int = 5
    """Episodes per evaluation."""
    eval_polyak_actor: bool = False
    """Also evaluate the Polyak-averaged actor (TD3's actor_target) on the same tracks: twice the evaluation time."""
    checkpoint_freq: int = 10000
    """Env steps between checkpoints; 0 disables them."""
    save_replay_buffer: bool = False
    """Save the replay buffer with each checkpoint (needed to resume exactly; large)."""
    output_dir: str = "runs"
    """Parent directory of the run directories."""
    log_interval: int = 1
    """Episodes between logger dumps."""
    progress_bar: bool = True
    """Show a progress bar with ETA."""

    def __post_init__(self) -> None:
        _check(self.total_timesteps >= 1, "total_timesteps", self.total_timesteps, ">= 1")
        known_device = self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")
        _check(known_device, "device", self.device, "auto, cpu, cuda, cuda:N")
        for name in ("eval_freq", "checkpoint_freq"):
            _check(getattr(self, name) >= 0, name, getattr(self, name), ">= 0")
        _check(self.eval_episodes >= 1, "eval_episodes", self.eval_episodes, ">= 1")
        _check(self.threads is None or self.threads >= 1, "threads", self.threads, ">= 1 or null")
        _check(self.log_interval >= 1, "log_interval", self.log_interval, ">= 1")


@dataclass
class MonitorConfig:
    """The ``monitor:`` section: the training-health callbacks' settings (sb3_carla_td3.callbacks, same defaults).

    Patience and warm-ups are in env steps, for every algorithm (sb3_carla_td3.callbacks.measurement); episode windows
    count episodes.
    """

    q_bound_margin: float = 1.5
    """Q diverges above margin * max|r| / (1 - gamma) + q_atol."""
    q_atol: float = 1.0
    """Absolute slack of the Q bound, so tiny or zero rewards give no false alarm."""
    q_growth_factor: float | None = 10.0
    """Q diverges when it grows more than this factor within 5 env steps (above the bound's scale); null: off."""
    q_check_freq: int = 50
    """Env steps between replay-scored Q and actor checks for algorithms that do not measure themselves (TD3CNN's own
    statistics are read after every update)."""
    q_samples: int = 256
    """Replay samples scored per such check."""
    stop_on_divergence: bool = False
    """Stop training (after a checkpoint) when Q diverges."""
    stop_on_clip_violation: bool = False
    """Stop training (after a checkpoint) when a post-clip norm exceeds its limit."""
    collapse_fraction: float = 0.3
    """Episode-length collapse: rolling mean below this fraction of the baseline..."""
    collapse_patience: int = 5
    """...for this many consecutive episode checks."""
    collapse_window: int = 10
    """Episodes in the rolling mean."""
    baseline_episodes: int = 10
    """Episodes after learning starts that define the baseline length."""
    baseline_length: float | None = None
    """A fixed baseline episode length instead (null: measured)."""
    stop_on_collapse: bool = False
    """Stop training (after a checkpoint) on an episode-length collapse."""
    reward_window: int = 30
    """Episodes in the reward-trend regression (>= 3)."""
    reward_tolerance: float = 1.0
    """Degrading: last-third mean below first-third mean by more than this many return std."""
    saturation_max_fraction: float = 0.9
    """Actor saturation: share of action entries at |a| > 0.99 above which a check counts as saturated..."""
    saturation_patience_steps: int = 100
    """...at every check for this many env steps (100: 50 TD3CNN actor updates at policy_delay 2)."""
    stop_on_saturation: bool = False
    """Stop training (after a checkpoint) when the actor stays saturated."""
    variation_min_std: float = 0.01
    """Blind actor: its actions' spread over a replay batch (largest per-dimension std) below this counts as blind..."""
    variation_patience_steps: int = 200
    """...at every check for this many env steps (200: 100 TD3CNN actor updates at policy_delay 2)..."""
    variation_warmup_steps: int = 5000
    """...checked from this many env steps after learning_starts (a fresh actor is nearly blind)."""
    stop_on_blind: bool = False
    """Stop training (after a checkpoint) when the actor stays blind."""
    dormant_check_freq: int = 1000
    """Dormant units (Sokar et al. 2023): env steps between measurements of every layer on a replay batch..."""
    dormant_tau: float = 0.0
    """...a unit is dormant when its mean |activation| is at most this share of its layer's mean (0: never fires)..."""
    dormant_max_first_conv: float = 0.95
    """...and the first conv layer counts as dead at this share of dormant channels or more..."""
    dormant_patience_steps: int = 2000
    """...at every measurement for this many env steps."""
    stop_on_dead_encoder: bool = False
    """Stop training (after a checkpoint) when the first conv layer stays dead."""

    def __post_init__(self) -> None:
        _check(self.q_bound_margin >= 1, "q_bound_margin", self.q_bound_margin, ">= 1")
        _check(self.q_atol >= 0, "q_atol", self.q_atol, ">= 0")
        growth, baseline = self.q_growth_factor, self.baseline_length
        _check(growth is None or growth > 1, "q_growth_factor", growth, "> 1 or null")
        _check(0 < self.collapse_fraction < 1, "collapse_fraction", self.collapse_fraction, "(0, 1)")
        for name in ("q_check_freq", "q_samples", "collapse_patience", "collapse_window", "baseline_episodes"):
            _check(getattr(self, name) >= 1, name, getattr(self, name), ">= 1")
        _check(baseline is None or baseline > 0, "baseline_length", baseline, "> 0 or null")
        _check(self.reward_window >= 3, "reward_window", self.reward_window, ">= 3")
        _check(self.reward_tolerance >= 0, "reward_tolerance", self.reward_tolerance, ">= 0")
        fraction = self.saturation_max_fraction
        _check(0 < fraction <= 1, "saturation_max_fraction", fraction, "(0, 1]")
        for name in ("saturation_patience_steps", "variation_patience_steps"):
            _check(getattr(self, name) >= 0, name, getattr(self, name), ">= 0 (env steps)")
        _check(self.variation_min_std > 0, "variation_min_std", self.variation_min_std, "> 0")
        _check(self.variation_warmup_steps >= 0, "variation_warmup_steps", self.variation_warmup_steps, ">= 0")
        _check(self.dormant_check_freq >= 1, "dormant_check_freq", self.dormant_check_freq, ">= 1")
        _check(self.dormant_tau >= 0, "dormant_tau", self.dormant_tau, ">= 0")
        share = self.dormant_max_first_conv
        _check(0 < share <= 1, "dormant_max_first_conv", share, "(0, 1]")
        _check(self.dormant_patience_steps >= 0, "dormant_patience_steps", self.dormant_patience_steps, ">= 0 (env steps)")


@dataclass
class EnvSection:
    """The ``env:`` section: ``name`` picks the environment, every other key is a field of its options dataclass."""

    name: str = "carracing"
    """carracing (gymnasium CarRacing-v3, the embedded default) or carla."""
    options: Any = None
    """The environment's options dataclass (CarRacingConfig or CarlaConfig); null: its defaults."""

    def __post_init__(self) -> None:
        _check(self.name in ENV_CONFIG_CLASSES, "name", self.name, ", ".join(ENV_CONFIG_CLASSES))
        if self.options is None:
            self.options = env_options_class(self.name)()


@dataclass
class RunConfig:
    """A whole run: one dataclass per YAML section, plus the file it came from."""

    env: EnvSection = field(default_factory=EnvSection)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    td3: TD3Config = field(default_factory=TD3Config)
    run: RunSettings = field(default_factory=RunSettings)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    source: str | None = None
    """The YAML file this config was loaded from (None when built in code)."""

    def __post_init__(self) -> None:
        if self.td3.learning_starts >= self.run.total_timesteps:
            warnings.warn(
                f"td3.learning_starts={self.td3.learning_starts} >= run.total_timesteps={self.run.total_timesteps}: "
                "no gradient update will happen in this run",
                UserWarning,
                stacklevel=2,
            )

    def model_kwargs(self, n_actions: int) -> dict[str, Any]:
        """TD3CNN keyword arguments for this config: every ``td3`` and ``encoder`` field is read here.

        :param n_actions: action dimension, for the exploration noise
        :return: keyword arguments for ``TD3CNN(policy, env, **kwargs)``
        """
        td3, encoder = self.td3, self.encoder
        noise: ActionNoise | None = None
        if td3.exploration_noise_final is not None:
            sigma, final = np.full(n_actions, td3.exploration_noise), np.full(n_actions, td3.exploration_noise_final)
            noise = LinearDecayNormalNoise(np.zeros(n_actions), sigma, final, td3.exploration_noise_decay_steps)
        elif td3.exploration_noise > 0:
            noise = NormalActionNoise(np.zeros(n_actions), np.full(n_actions, td3.exploration_noise))
        extractor_kwargs: dict[str, Any] = {
            "cnn": encoder.cnn,
            "rnn": encoder.rnn,
            "cnn_features": encoder.cnn_features,
            "rnn_hidden": encoder.rnn_hidden,
            "vector_mlp": encoder.vector_mlp,
            "trunk": encoder.trunk,
            "center_pixels": encoder.center_pixels,
        }
        if encoder.frames is not None:
            extractor_kwargs["frames"] = encoder.frames
        return {
            "learning_rate": td3.learning_rate,
            "actor_lr": td3.actor_lr,
            "critic_lr": td3.critic_lr,
            "buffer_size": td3.buffer_size,
            "learning_starts": td3.learning_starts,
            "batch_size": td3.batch_size,
            "tau": td3.tau,
            "gamma": td3.gamma,
            "n_steps": td3.n_steps,
            "train_freq": td3.train_freq,
            "gradient_steps": td3.gradient_steps,
            "action_noise": noise,
            "policy_delay": td3.policy_delay,
            "target_policy_noise": td3.target_policy_noise,
            "target_noise_clip": td3.target_noise_clip,
            "actor_grad_clip": td3.actor_grad_clip,
            "critic_grad_clip": td3.critic_grad_clip,
            "clip_check": td3.clip_check,
            "nonfinite_grads": td3.nonfinite_grads,
            "encoder": encoder.mode,
            "replay_buffer": td3.replay_buffer,
            "preact_penalty": td3.preact_penalty,
            "augment": td3.augment,
            "augment_pad": td3.augment_pad,
            "policy_kwargs": {
                "net_arch": list(encoder.net_arch),
                "critic_layer_norm": encoder.critic_layer_norm,
                "features_extractor_kwargs": extractor_kwargs,
            },
            "seed": self.run.seed,
            "device": self.run.device,
        }

    def to_dict(self) -> dict[str, Any]:
        """The effective config as plain YAML-ready data (env options flattened next to ``name``)."""
        data = {name: dataclasses.asdict(getattr(self, name)) for name in ("encoder", "td3", "run", "monitor")}
        data = {"env": {"name": self.env.name, **dataclasses.asdict(self.env.options)}, **data}
        return data

    def save(self, path: str | Path) -> Path:
        """Write the effective config as YAML.

        :param path: destination file
        :return: the path written
        """
        path = Path(path)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path


def env_options_class(name: str) -> type:
    """The options dataclass of environment ``name`` (imported lazily; neither imports ``carla``).

    :param name: a key of ``ENV_CONFIG_CLASSES``
    :return: the dataclass type
    """
    module, _, attr = ENV_CONFIG_CLASSES[name].partition(":")
    return getattr(importlib.import_module(module), attr)
