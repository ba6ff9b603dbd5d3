"""Dormant units: the share of each layer's units that (almost) never fire.

Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep Reinforcement Learning" (ICML), definition 3.1: unit ``i``
of layer ``l`` is τ-dormant when its score

    s_i = E_x |h_i(x)| / ( (1/H_l) Σ_k E_x |h_k(x)| )  <=  τ

on a batch of inputs ``x`` (here: replay observations), where ``h_i`` is the unit's activation and ``H_l`` the
layer's width. A channel of a conv layer is one unit (its activation averaged over the image positions too). With
τ = 0 a unit is dormant when it is exactly 0 on every input (a dead ReLU).

Measured on CarRacing (docs/results.md, section 5): from uncentred pixels, the first conv layer of the shared encoder
lost 29-31 of its 32 channels within 5K steps; on the seed with 31 dead its actor went blind.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from torch import nn

from sb3_carla_td3.callbacks.measurement import Persistence
from sb3_carla_td3.callbacks.utils import is_count, is_number, require
from sb3_carla_td3.callbacks.verdicts import HealthVerdict, keep_training, warn_health
from sb3_carla_td3.q_scoring import deterministic_actions, preserved_rng

#: Modules whose output is a layer's activations (what the definition scores).
ACTIVATIONS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh)


def dormant_share(activations: th.Tensor, tau: float) -> float:
    """The share of a layer's units that are τ-dormant on a batch.

    :param activations: ``(batch, units)`` for a linear layer, ``(batch, channels, H, W)`` for a conv layer
    :param tau: the threshold on the normalised score (0: exactly zero on every input)
    :return: dormant units / units, in [0, 1]; a layer whose every activation is 0 is wholly dormant
    """
    if activations.dim() < 2:
        raise ValueError(f"dormant_share: expected (batch, units, ...) activations, got shape {tuple(activations.shape)}")
    per_unit = activations.detach().abs().float().transpose(0, 1).reshape(activations.shape[1], -1).mean(dim=1)
    layer_mean = per_unit.mean()
    if layer_mean <= 0:
        return 1.0
    return float((per_unit / layer_mean <= tau).float().mean())


def activation_layers(network: nn.Module, prefix: str = "") -> dict[str, nn.Module]:
    """The activation modules of ``network`` by their dotted path, each module once.

    :param network: a policy, an actor, a critic or an encoder
    :param prefix: put before each path (``"critic."``)
    :return: path -> module, in the order of ``named_modules`` (a network's first conv layer first)
    """
    layers: dict[str, nn.Module] = {}
    for name, module in network.named_modules(remove_duplicate=True):
        if isinstance(module, ACTIVATIONS):
            layers[prefix + name] = module
    return layers


@contextmanager
def recorded_outputs(layers: dict[str, nn.Module]) -> Iterator[dict[str, th.Tensor]]:
    """Record the output of each module of ``layers`` (the last call's) while the block runs; hooks removed after.

    :param layers: path -> module
    :return: path -> output tensor, filled as the block runs forward passes
    """
    outputs: dict[str, th.Tensor] = {}
    handles = []
    for path, module in layers.items():

        def hook(_module: nn.Module, _inputs: object, output: th.Tensor, path: str = path) -> None:
            outputs[path] = output.detach()

        handles.append(module.register_forward_hook(hook))
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def dormant_shares(layers: dict[str, nn.Module], forward: Callable[[], object], tau: float = 0.0) -> dict[str, float]:
    """The τ-dormant share of every layer of ``layers`` during ``forward()`` (run without gradient).

    :param layers: path -> activation module (:func:`activation_layers`)
    :param forward: runs the forward passes that feed those layers a batch of inputs
    :param tau: the dormancy threshold (Sokar et al. use 0 to 0.1)
    :return: path -> share, for every layer that ran
    """
    with recorded_outputs(layers) as outputs, th.no_grad():
        forward()
    return {path: dormant_share(output, tau) for path, output in outputs.items()}


def _is_encoder(path: str) -> bool:
    return path.startswith("encoder.") or ".features_extractor." in path


def model_layers(model: Any) -> dict[str, nn.Module]:
    """The activation layers of a model's encoder(s), critic and actor, each module once.

    :param model: an off-policy SB3 algorithm (``critic``, optionally ``actor``; TD3CNN's shared encoder is
        ``policy.encoder``)
    :return: dotted path (``encoder.``, ``critic.``, ``actor.``) -> activation module; the actor's output squashing
        (its last module) is left out
    """
    encoder = getattr(model.policy, "encoder", None)
    layers = activation_layers(encoder, prefix="encoder.") if isinstance(encoder, nn.Module) else {}
    seen = {id(module) for module in layers.values()}
    actor = getattr(model, "actor", None)
    output = None if actor is None else list(actor.modules())[-1]  # TD3's tanh on the action: not a hidden layer
    for prefix, network in (("critic.", model.critic), ("actor.", actor)):
        if network is None:
            continue
        for path, module in activation_layers(network, prefix=prefix).items():
            if id(module) not in seen and module is not output:
                layers[path] = module
                seen.add(id(module))
    return layers


def first_conv_layers(shares: dict[str, float], conv_paths: set[str]) -> dict[str, float]:
    """The first conv layer of each encoder (the shared one, or the critic's and the actor's own).

    :param shares: path -> dormant share, in network order
    :param conv_paths: the paths whose activations are images (conv layers)
    :return: encoder (``"encoder"``, ``"critic"``, ``"actor"``) -> share of its first conv layer
    """
    firsts: dict[str, float] = {}
    for path, share in shares.items():
        if path in conv_paths:
            encoder = path.split(".features_extractor.")[0] if ".features_extractor." in path else path.split(".")[0]
            firsts.setdefault(encoder, share)
    return firsts


class DormantUnitCallback(BaseCallback):
    """Log the share of dormant units of every layer (Sokar et al. 2023) and flag a first conv layer gone dead.

    Every ``check_freq`` env steps after ``learning_starts``, ``n_samples`` replay observations go through the
    critic (with the actor's actions) and the actor, without gradient and with every RNG restored afterwards, so a
    seeded run trains exactly as without this check. Logs ``dormant/<layer>`` per layer and
    ``health/dormant_first_conv`` (the worst first conv layer), ``health/dormant_encoder``, ``health/dormant_critic``
    and ``health/dormant_actor`` (shares of all units of that part). The alarm: the first conv layer at least
    ``max_first_conv`` dormant for ``patience_steps`` env steps, on an image-only observation; beside a vector (a
    Dict observation) the same finding is a warning and an N/A verdict, since the vector can carry the policy.

    Calibrated on CarRacing (docs/results.md, section 6): from uncentred pixels, the seed whose actor went blind had
    31 of 32 first-layer channels dead at 5K steps, the two that still learned 29 of 32; the camera + vector recipe
    ends its 120K frames with 26-28 of 32 dead and scores 898.5. Only a layer with (nearly) nothing left is an alarm.

    :param check_freq: env steps between measurements, >= 1
    :param n_samples: replay observations per measurement, >= 2
    :param tau: dormancy threshold on the normalised score (0: a unit that is 0 on every input)
    :param max_first_conv: the alarm's share of dormant first-layer channels, in (0, 1]
    :param patience_steps: env steps the share must stay at or above ``max_first_conv``, >= 0
    :param stop_on_dead: stop training (after a checkpoint) on the alarm
    :param checkpoint_path: where to save the model before such a stop; None saves nothing
    :param verbose: verbosity level
    """

    def __init__(
        self,
        check_freq: int = 1000,
        n_samples: int = 256,
        tau: float = 0.0,
        max_first_conv: float = 0.95,
        patience_steps: int = 2000,
        stop_on_dead: bool = False,
        checkpoint_path: str | os.PathLike[str] | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        require(is_count(check_freq), "check_freq", check_freq, "an int >= 1")
        require(is_count(n_samples) and n_samples >= 2, "n_samples", n_samples, "an int >= 2")
        require(is_number(tau) and tau >= 0, "tau", tau, "a float >= 0")
        require(is_number(max_first_conv, 0) and max_first_conv <= 1, "max_first_conv", max_first_conv, "in (0, 1]")
        require(is_count(patience_steps) or patience_steps == 0, "patience_steps", patience_steps, "an int >= 0 (env steps)")
        self.check_freq, self.n_samples, self.tau = check_freq, n_samples, float(tau)
        self.max_first_conv, self.patience_steps = float(max_first_conv), patience_steps
        self.stop_on_dead, self.checkpoint_path = stop_on_dead, checkpoint_path
        self.persistence = Persistence(patience_steps)
        self.latest: dict[str, float] = {}
        self.first_conv: float | None = None
        self.peak_first_conv: float | None = None
        self.dead_at_step: int | None = None
        self.beside_vector = False
        self.not_applicable: str | None = None
        self._last_step: int | None = None

    def _on_training_start(self) -> None:
        self._last_step = None  # learn(reset_num_timesteps=True) restarts the count
        if self.persistence.since is None:  # the condition is judged from learning_starts on
            self.persistence.start = max(self.persistence.start, int(getattr(self.model, "learning_starts", 0)))

    def _on_step(self) -> bool:
        if self._last_step is not None and self.num_timesteps - self._last_step < self.check_freq:
            return True
        if self.num_timesteps < int(getattr(self.model, "learning_starts", 0)):
            return True
        shares = self.measure()
        if shares is None:
            return True
        self._last_step = self.num_timesteps
        for path, share in shares.items():
            self.logger.record(f"dormant/{path}", share)
        if self.first_conv is None:
            return True
        self.logger.record("health/dormant_first_conv", self.first_conv)
        dead = self.persistence.update(self.first_conv >= self.max_first_conv, self.num_timesteps)
        if dead and self.dead_at_step is None:
            self.dead_at_step = self.num_timesteps
            self.beside_vector = isinstance(self.model.observation_space, spaces.Dict)
            carries = " (a vector input carries the policy: not an alarm)" if self.beside_vector else ""
            warn_health(
                f"first conv layer dead at timestep {self.num_timesteps}: {self.first_conv:.0%} of its channels dormant "
                f"(tau={self.tau:g}) for {self.persistence.held(self.num_timesteps)} env steps, at or above "
                f"{self.max_first_conv:.0%}; the encoder passes (almost) nothing (uncentred pixels? "
                f"encoder.center_pixels: true keeps it alive){carries}"
            )
        return keep_training(self.model, self.alarm and self.stop_on_dead, self.checkpoint_path)

    @property
    def alarm(self) -> bool:
        """Whether the check failed: a dead first conv layer on an image-only observation.

        Beside a vector (a Dict observation) a dead camera encoder is logged and warned about but is no alarm: the
        policy can drive on the vector alone (measured: separate encoders, camera + vector, seed 2, 100 % dead from
        2,500 steps and 786.4 at 80K frames).
        """
        return self.dead_at_step is not None and not self.beside_vector

    def measure(self) -> dict[str, float] | None:
        """Measure every layer now on a replay sample (RNG restored); log the part totals.

        :return: layer path -> dormant share, or None (no critic or replay buffer, or too few transitions)
        """
        model: Any = self.model  # an off-policy algorithm with a critic (checked below)
        buffer = getattr(model, "replay_buffer", None)
        if getattr(model, "critic", None) is None or buffer is None:
            self.not_applicable = f"{type(model).__name__} has no critic and replay buffer to measure"
            return None
        if buffer.size() < 2:
            return None
        layers = model_layers(model)
        with preserved_rng(model.device), recorded_outputs(layers) as outputs, th.no_grad():
            data = buffer.sample(self.n_samples, env=model.get_vec_normalize_env())
            # TD3CNN's shared encoder feeds heads that read features; every other policy's heads read observations
            inputs = model.policy.encode(data.observations) if hasattr(model.policy, "encode") else data.observations
            actions = deterministic_actions(model, inputs)
            model.critic(inputs, data.actions if actions is None else actions)
        order = {path: i for i, path in enumerate(layers)}
        shares, units = {}, {}
        for path in sorted(outputs, key=order.__getitem__):
            shares[path], units[path] = dormant_share(outputs[path], self.tau), outputs[path].shape[1]
        for part, test in (
            ("encoder", _is_encoder),
            ("critic", lambda p: p.startswith("critic.") and not _is_encoder(p)),
            ("actor", lambda p: p.startswith("actor.") and not _is_encoder(p)),
        ):
            paths = [p for p in shares if test(p)]
            if paths:
                total = sum(units[p] for p in paths)
                self.logger.record(f"health/dormant_{part}", sum(shares[p] * units[p] for p in paths) / total)
        firsts = first_conv_layers(shares, {path for path, output in outputs.items() if output.dim() == 4})
        self.first_conv = max(firsts.values()) if firsts else None
        if self.first_conv is not None:
            self.peak_first_conv = max(self.peak_first_conv or 0.0, self.first_conv)
        self.latest = shares
        return shares

    def verdict(self) -> HealthVerdict:
        """Whether no first conv layer stayed (nearly) all dormant for ``patience_steps`` env steps.

        :return: value = the share at the alarm (else the latest), threshold = ``max_first_conv``; N/A (with the
            reason) without a conv encoder, without a critic, or before the first measurement
        """
        if self.first_conv is None:
            if self.latest:
                detail = "no conv layer to judge (dormant shares of the other layers are logged under dormant/)"
                return HealthVerdict(None, None, self.max_first_conv, detail, applies=False)
            if self.not_applicable:
                return HealthVerdict(None, None, self.max_first_conv, self.not_applicable, applies=False)
            detail = f"not measured yet (every {self.check_freq} env steps after learning_starts)"
            return HealthVerdict(None, None, self.max_first_conv, detail)
        if self.dead_at_step is not None:
            detail = f"first conv layer dead from timestep {self.dead_at_step} (tau={self.tau:g})"
            detail += f"; latest {self.first_conv:.0%}"
            if self.beside_vector:
                detail += "; not judged beside a vector input, which can carry the policy alone"
                return HealthVerdict(None, self.first_conv, self.max_first_conv, detail)
            return HealthVerdict(False, self.first_conv, self.max_first_conv, detail)
        detail = f"peak {self.peak_first_conv:.0%} of first-layer channels dormant (tau={self.tau:g})"
        detail += f", latest {self.first_conv:.0%}"
        return HealthVerdict(True, self.first_conv, self.max_first_conv, detail)
