"""TD3CNN policies: SB3's TD3Policy with the pooled NatureCNN + GRU encoder and ``net_arch=[256, 256]`` as defaults.

The wiring is SB3's ``share_features_extractor=False`` layout: actor, critic, actor_target and critic_target each own
an encoder copy, the targets are Polyak-updated with their heads, and ``critic.q1_forward`` encodes the raw
observation with the critic's own encoder, so the actor loss never feeds actor-encoder features to a critic head.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ContinuousCritic
from stable_baselines3.common.preprocessing import get_action_dim, preprocess_obs
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor, create_mlp
from stable_baselines3.td3.policies import TD3Policy
from torch import nn

from sb3_carla_td3.extractors import ENCODER_PRESETS, CnnGruExtractor

DEFAULT_NET_ARCH = (256, 256)


def image_space_of(observation_space: spaces.Space, image_key: str = "image") -> spaces.Space:
    """The image part of an observation space: the space itself, or the Dict entry ``image_key``.

    :param observation_space: a Box image space or a Dict space holding one
    :param image_key: the Dict key of the image
    :return: the image space
    :raises ValueError: for a Dict without ``image_key``, naming the keys it has
    """
    if not isinstance(observation_space, spaces.Dict):
        return observation_space
    if image_key not in observation_space.spaces:
        images = [k for k, s in observation_space.spaces.items() if isinstance(s, spaces.Box) and len(s.shape) == 3]
        hint = f"; pass features_extractor_kwargs=dict(image_key={images[0]!r})" if images else ""
        raise ValueError(
            f"the Dict observation space has no image key {image_key!r}; its keys are {sorted(observation_space.spaces)}"
            + hint
        )
    return observation_space.spaces[image_key]


def default_frames(observation_space: spaces.Space, rnn: str | None, image_key: str = "image") -> int:
    """The frame count of an image observation when neither the env nor the caller gave one.

    Frames are never guessed from a channel count: a stacked-channel CNN (``rnn=None``) reads every channel at once,
    so one frame of all channels is exact; a per-frame encoder (``rnn`` set) needs the real count, and gets 1 only
    for a 1- or 3-channel image (one grayscale or RGB frame).

    :param observation_space: a Box image space or a Dict space holding one under ``image_key``
    :param rnn: the encoder's recurrent layer type, None for the stacked-channel CNN
    :param image_key: the Dict key of the image
    :return: the number of frames
    :raises ValueError: a per-frame encoder on a multi-channel image whose frame count nobody stated
    """
    space = image_space_of(observation_space, image_key)
    channels = space.shape[0] if isinstance(space, spaces.Box) and len(space.shape) == 3 else 1
    if rnn is None or channels in (1, 3):
        return 1
    raise ValueError(
        f"the per-frame encoder (rnn={rnn!r}) needs to know how many frames the {channels}-channel image stacks, and "
        "the env does not say (no VecFrameStack, FrameStackObservation or frame_stack attribute); pass "
        "policy_kwargs=dict(features_extractor_kwargs=dict(frames=N))"
    )


class LayerNormCritic(ContinuousCritic):
    """SB3's ``ContinuousCritic`` whose hidden layers are ``Linear -> LayerNorm -> activation``.

    LayerNorm in the critic is what keeps several gradient steps per env step stable (Ball et al. 2023, RLPD;
    Nauman et al. 2024, "Overestimation, Overfitting, and Plasticity in Actor-Critic"): it bounds the features the
    Q-head extrapolates from. Same arguments as :class:`~stable_baselines3.common.policies.ContinuousCritic`, by
    keyword (as ``TD3Policy.make_critic`` passes them).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        action_dim = get_action_dim(self.action_space)
        net_arch, activation_fn = kwargs["net_arch"], kwargs.get("activation_fn", nn.ReLU)
        features_dim = kwargs["features_dim"]
        for idx in range(len(self.q_networks)):
            layers = create_mlp(features_dim + action_dim, 1, net_arch, activation_fn, post_linear_modules=[nn.LayerNorm])
            q_net = nn.Sequential(*layers)
            self.add_module(f"qf{idx}", q_net)  # replaces SB3's plain network under the same name
            self.q_networks[idx] = q_net


class MlpPolicy(TD3Policy):
    """SB3's TD3 ``MlpPolicy`` with one option more (the same option as :class:`CnnPolicy`'s).

    :param critic_layer_norm: LayerNorm after every hidden layer of both critics (:class:`LayerNormCritic`), for an
        update-to-data ratio above 1 (``gradient_steps > train_freq``); off: SB3's critic, bit for bit
    """

    def __init__(self, *args: Any, critic_layer_norm: bool = False, **kwargs: Any) -> None:
        self.critic_layer_norm = critic_layer_norm  # read by make_critic, which the parent's __init__ calls
        super().__init__(*args, **kwargs)

    def make_critic(self, features_extractor: BaseFeaturesExtractor | None = None) -> ContinuousCritic:
        if not self.critic_layer_norm:
            return super().make_critic(features_extractor)
        critic_kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)
        return LayerNormCritic(**critic_kwargs).to(self.device)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), "critic_layer_norm": self.critic_layer_norm}


class CnnPolicy(MlpPolicy):
    """TD3 policy for image (Box) observations; see :class:`stable_baselines3.td3.policies.TD3Policy` for the arguments.

    A non-image observation is refused (SB3's TD3 says "You should use NatureCNN only with images"); use
    ``MlpPolicy``. Only the defaults differ: ``features_extractor_class=CnnGruExtractor`` with the settings of
    ``encoder_preset`` (:data:`~sb3_carla_td3.extractors.ENCODER_PRESETS`; explicit ``features_extractor_kwargs``
    override single entries) and ``net_arch=[256, 256]`` (SB3 would give a custom extractor [400, 300]).
    ``share_features_extractor=True`` is refused: it lets the actor loss alone train the encoder.

    :param encoder_preset: "nature" (default: stacked NatureCNN, 50-feature trunk; the recipe every learning result
        uses) or "pooled_gru" (the design card's per-frame pooled CNN + GRU-48, ~60x the cost, for a GPU); only read
        when ``features_extractor_class`` is None or :class:`CnnGruExtractor`. Either centres the pixels of an image
        observation (the pixels recipe) and leaves them in [0, 1] beside a vector (a Dict observation: the camera +
        vector recipe); ``features_extractor_kwargs=dict(center_pixels=...)`` decides otherwise
    :param critic_layer_norm: LayerNorm in both critics' hidden layers (:class:`MlpPolicy`)
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        lr_schedule: Any,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        features_extractor_class: type[BaseFeaturesExtractor] | None = None,
        features_extractor_kwargs: dict[str, Any] | None = None,
        share_features_extractor: bool = False,
        encoder_preset: str = "nature",
        critic_layer_norm: bool = False,
        **kwargs: Any,
    ) -> None:
        if encoder_preset not in ENCODER_PRESETS:
            raise ValueError(f"encoder_preset must be one of {sorted(ENCODER_PRESETS)}, got {encoder_preset!r}")
        if share_features_extractor:
            raise ValueError(
                "share_features_extractor=True is not supported by TD3CNN: SB3's TD3 then trains the shared encoder "
                "with the actor loss only. Use TD3CNN(..., encoder='shared') for one critic-trained encoder."
            )
        if features_extractor_class is None:
            if not _has_image(observation_space):
                raise ValueError(
                    f"{type(self).__name__} needs an image observation (a Box of shape (channels, height, width), or a "
                    f"Dict holding one), got {observation_space}; use 'MlpPolicy' for vector observations"
                )
            features_extractor_class = CnnGruExtractor
        features_extractor_kwargs = dict(features_extractor_kwargs or {})
        if features_extractor_class is CnnGruExtractor:
            preset = dict(ENCODER_PRESETS[encoder_preset])
            # Centred pixels for an image alone (the pixels recipe: a live first conv layer), raw [0, 1] pixels beside a
            # vector (the camera + vector recipe, measured better so): docs/results.md, sections 5 and 6.
            preset["center_pixels"] = not isinstance(observation_space, spaces.Dict)
            features_extractor_kwargs = {**preset, **features_extractor_kwargs}
            if features_extractor_kwargs.get("frames") is None:
                image_key = features_extractor_kwargs.get("image_key", "image")
                rnn = features_extractor_kwargs.get("rnn")
                features_extractor_kwargs["frames"] = default_frames(observation_space, rnn, image_key)
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch=list(DEFAULT_NET_ARCH) if net_arch is None else net_arch,
            features_extractor_class=features_extractor_class,
            features_extractor_kwargs=features_extractor_kwargs,
            share_features_extractor=False,
            critic_layer_norm=critic_layer_norm,
            **kwargs,
        )
        self.encoder_preset = encoder_preset

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), "encoder_preset": self.encoder_preset}


class MultiInputPolicy(CnnPolicy):
    """:class:`CnnPolicy` for Dict observations (image under ``"image"`` plus vector keys); same defaults, but
    uncentred pixels (the camera + vector recipe)."""


def _has_image(observation_space: spaces.Space) -> bool:
    if isinstance(observation_space, spaces.Dict):
        return any(isinstance(s, spaces.Box) and len(s.shape) == 3 for s in observation_space.spaces.values())
    return isinstance(observation_space, spaces.Box) and len(observation_space.shape) == 3


class SharedEncoderPolicy(CnnPolicy):
    """One encoder trained by the critic loss only; the actor reads detached features (DrQ-v2 practice).

    ``encoder`` turns observations into features; ``actor``, ``critic`` and their targets are heads on those features
    (their own features extractor is a parameter-free flatten). The critic optimizer steps ``encoder`` with the
    q-networks and the actor optimizer steps only the actor head. As in DrQ-v2 there is no target encoder: next
    observations are encoded by the online encoder without gradient, for the target heads, and the frames obs and
    next obs share are encoded once (:meth:`CnnGruExtractor.forward_pair`). Arguments as :class:`CnnPolicy`.
    """

    encoder: BaseFeaturesExtractor

    def _build(self, lr_schedule: Any) -> None:
        self.encoder = self.make_features_extractor().to(self.device)
        feature_space = spaces.Box(-np.inf, np.inf, (self.encoder.features_dim,), np.float32)
        for kwargs in (self.actor_kwargs, self.critic_kwargs):
            kwargs["observation_space"] = feature_space
        self.actor = self.make_actor(features_extractor=FlattenExtractor(feature_space))
        self.actor_target = self.make_actor(features_extractor=FlattenExtractor(feature_space))
        self.critic = self.make_critic(features_extractor=FlattenExtractor(feature_space))
        self.critic_target = self.make_critic(features_extractor=FlattenExtractor(feature_space))
        self.actor_target.load_state_dict(self.actor.state_dict())
        self.critic_target.load_state_dict(self.critic.state_dict())
        # Encoder ownership, in one line: the critic optimizer steps the encoder, the actor optimizer never does.
        optimizer_kwargs = {"lr": lr_schedule(1), **self.optimizer_kwargs}
        self.actor.optimizer = self.optimizer_class(self.actor.parameters(), **optimizer_kwargs)
        critic_params = [*self.encoder.parameters(), *self.critic.parameters()]
        self.critic.optimizer = self.optimizer_class(critic_params, **optimizer_kwargs)
        self.actor_target.set_training_mode(False)
        self.critic_target.set_training_mode(False)

    def encode(self, observation: Any) -> th.Tensor:
        """Encoder features, ``(batch, *obs_shape) -> (batch, features_dim)``, with gradient."""
        return self.extract_features(observation, self.encoder)

    def encode_pair(self, observation: Any, next_observation: Any) -> tuple[th.Tensor, th.Tensor]:
        """Features of obs (with gradient) and of next obs (detached), for the critic loss and the TD target.

        :param observation: a replay batch's observations
        :param next_observation: its next observations
        :return: (obs features, next-obs features)
        """
        obs = preprocess_obs(observation, self.observation_space, normalize_images=self.normalize_images)
        next_obs = preprocess_obs(next_observation, self.observation_space, normalize_images=self.normalize_images)
        if isinstance(self.encoder, CnnGruExtractor):
            return self.encoder.forward_pair(obs, next_obs)
        with th.no_grad():
            next_features = self.encoder(next_obs)
        return self.encoder(obs), next_features

    def _predict(self, observation: Any, deterministic: bool = False) -> th.Tensor:
        return self.actor(self.encode(observation))

    def set_training_mode(self, mode: bool) -> None:
        super().set_training_mode(mode)
        self.encoder.train(mode)


class SharedEncoderMultiInputPolicy(SharedEncoderPolicy):
    """:class:`SharedEncoderPolicy` for Dict observations (image under ``"image"`` plus vector keys)."""


@contextmanager
def acting_with_target_actor(policy: TD3Policy, enabled: bool = True) -> Iterator[TD3Policy]:
    """Within the block, ``policy`` acts with its Polyak-averaged actor (``actor_target``) instead of ``actor``.

    TD3 keeps ``actor_target``, an exponential moving average of the actor's weights (rate ``tau``), for its TD target;
    acting with it averages out the last updates' churn at no training cost. With separate encoders the target
    actor's encoder is averaged too; with the shared encoder it reads the online encoder, as it does in training.

    :param policy: a TD3 policy (SB3's or TD3CNN's)
    :param enabled: False leaves the actor acting (a command's ``--polyak-actor`` flag passed straight through)
    :return: the same policy, swapped back on exit (also on an exception)
    """
    if not enabled:
        yield policy
        return
    online, target = policy.actor, policy.actor_target
    policy.actor, policy.actor_target = target, online
    try:
        yield policy
    finally:
        policy.actor, policy.actor_target = online, target
