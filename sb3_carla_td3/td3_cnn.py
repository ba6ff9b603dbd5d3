"""TD3CNN: SB3's TD3 with per-side learning rates, verified joint gradient clipping and audited encoder wiring."""

from __future__ import annotations

import time
import warnings
from typing import Any, ClassVar, TypeGuard, TypeVar, cast

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import TD3
from stable_baselines3.common.buffers import DictReplayBuffer, ReplayBuffer
from stable_baselines3.common.noise import ActionNoise, NormalActionNoise
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, Schedule
from stable_baselines3.common.utils import FloatSchedule, polyak_update, update_learning_rate
from stable_baselines3.td3.policies import TD3Policy
from torch.nn import functional as F

from sb3_carla_td3.augmentation import AUGMENTATIONS, shift_pair
from sb3_carla_td3.buffers import (
    DictFrameStackReplayBuffer,
    FrameStackReplayBuffer,
    available_memory,
    detect_frame_stack,
    replay_bytes_per_transition,
)
from sb3_carla_td3.errors import NonFiniteGradientError, ReplayMemoryError
from sb3_carla_td3.extractors import CnnGruExtractor
from sb3_carla_td3.gradients import (
    CLIP_CHECKS,
    OptimizedParams,
    all_finite,
    audit_optimizers,
    check_clip,
    clip_to_norm,
    measure_gradients,
)
from sb3_carla_td3.policies import (
    CnnPolicy,
    MlpPolicy,
    MultiInputPolicy,
    SharedEncoderMultiInputPolicy,
    SharedEncoderPolicy,
    _has_image,
)
from sb3_carla_td3.train_stats import TrainStats, action_spread, q_statistics, saturation_share, side_field

SelfTD3CNN = TypeVar("SelfTD3CNN", bound="TD3CNN")


def _is_real(value: object) -> TypeGuard[float]:
    """:return: whether ``value`` is an int or float and not a bool (``True`` is no learning rate or clip limit)"""
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)

NONFINITE_MODES = ("skip", "raise")
ENCODER_MODES = ("separate", "shared")
REPLAY_BUFFERS = ("auto", "frame_stack", "sb3")
SHARED_POLICIES: dict[str, type[TD3Policy]] = {
    "CnnPolicy": SharedEncoderPolicy,
    "MultiInputPolicy": SharedEncoderMultiInputPolicy,
}
#: Exploration noise std when ``action_noise="auto"``: 0.1 x the action range's half-width (TD3 paper, sec. 6.1).
DEFAULT_EXPLORATION_NOISE = 0.1
#: ``batch_size=None``: the camera recipes' batch (docs/results.md) for image observations, SB3's 256 otherwise.
IMAGE_BATCH_SIZE, VECTOR_BATCH_SIZE = 96, 256
#: ``buffer_size=None``: SB3's 1M transitions, capped to the share of the available memory the buffer may take.
MAX_AUTO_BUFFER_SIZE, AUTO_BUFFER_MEMORY_SHARE = 1_000_000, 0.5
#: The arguments that give back SB3's ``TD3`` defaults and this library's 0.1.0 encoder (pooled CNN + GRU, separate
#: encoders): ``TD3CNN("CnnPolicy", env, **PLAIN_TD3)``.
PLAIN_TD3: dict[str, Any] = {
    "action_noise": None,
    "preact_penalty": 0.0,
    "encoder": "separate",
    "batch_size": 256,
    "buffer_size": 1_000_000,
    "learning_starts": 100,
    "augment": None,
    "policy_kwargs": {"encoder_preset": "pooled_gru", "features_extractor_kwargs": {"trunk": None, "center_pixels": False}},
}
#: Seconds per gradient step above which a CPU run with the pooled encoder gets a warning.
SLOW_STEP_WARNING_S = 0.5


def _resolve_encoder(policy: str | type[TD3Policy], encoder: str) -> tuple[str | type[TD3Policy], str]:
    """The policy to build and the encoder mode, ``encoder="auto"`` resolved: "shared" for this library's image
    policies (by name or class), "separate" otherwise (an MLP, or a policy class of the user's own).

    :return: (policy name or class, "shared" | "separate")
    :raises ValueError: an unknown mode, or a mode the policy cannot have
    """
    if encoder not in (*ENCODER_MODES, "auto"):
        raise ValueError(f"encoder must be one of {(*ENCODER_MODES, 'auto')}, got {encoder!r}")
    if isinstance(policy, str):
        if policy not in SHARED_POLICIES:
            if encoder == "shared":
                raise ValueError(f"encoder='shared' needs an image policy {sorted(SHARED_POLICIES)}, got {policy!r}")
            return policy, "separate"
        return (SHARED_POLICIES[policy], "shared") if encoder != "separate" else (policy, "separate")
    if isinstance(policy, type) and issubclass(policy, SharedEncoderPolicy):
        if encoder == "separate":
            raise ValueError(f"encoder='separate' contradicts the shared-encoder policy class {policy.__name__}")
        return policy, "shared"
    by_class = {CnnPolicy: SharedEncoderPolicy, MultiInputPolicy: SharedEncoderMultiInputPolicy}
    if encoder != "separate" and policy in by_class:
        return by_class[policy], "shared"
    if encoder == "shared":
        raise ValueError(
            f"encoder='shared' needs 'CnnPolicy', 'MultiInputPolicy' or a SharedEncoderPolicy subclass, got the policy "
            f"class {getattr(policy, '__name__', policy)!r}, which would train separate encoders"
        )
    return policy, "separate"


class TD3CNN(TD3):
    """Twin Delayed DDPG (Fujimoto et al. 2018, https://arxiv.org/abs/1802.09477) for camera images.

    On top of SB3's TD3 it clips the actor (head + its CNN) and the critic (heads + their CNN) jointly, each by the
    global L2 norm of exactly the gradients its optimizer steps, measures the norm again after clipping and
    verifies it, skips non-finite updates, audits that every trainable parameter is stepped by exactly one
    optimizer, and logs pre/post-clip norms, clip fractions and Q statistics on every ``train()`` call.
    The other arguments are those of :class:`stable_baselines3.TD3`.

    Defaults that differ from SB3's ``TD3``, each measured in docs/results.md (section 5) on CarRacing-v3:

    - ``action_noise="auto"``: Gaussian noise of std 0.1 (x the action half-range, the TD3 paper's); SB3 adds none,
      so after its 100 random steps TD3 explores nothing. ``action_noise=None`` gives none.
    - ``preact_penalty=0.1``: without it the camera recipe pinned 97 % of its actions at +-1 and stood still (-84.6
      against 611.7 at equal frames).
    - ``encoder="auto"``: "shared" for image policies (every learning result: 898.5 +- 3.5 camera + vector, 3 seeds,
      120K frames); "separate" for an MLP or a policy class of the user's own.
    - the encoder preset "nature" of :class:`~sb3_carla_td3.policies.CnnPolicy` (stacked NatureCNN, 50-feature
      trunk, centred pixels; the uncentred first layer died on one pixels seed); ``"pooled_gru"`` is the design
      card's per-frame CNN + GRU, ~60x the arithmetic.
    - ``batch_size=None``: 96 for image observations (the camera recipes', and cheaper per step on a CPU), SB3's 256
      otherwise; ``learning_starts=500`` (SB3: 100); ``buffer_size=None``: SB3's 1M transitions, or
      as many as half the available memory holds; an explicit size that does not fit raises
      :class:`~sb3_carla_td3.errors.ReplayMemoryError` before anything is allocated.
    - ``actor_grad_clip=1.0``, ``critic_grad_clip=10.0`` (SB3: no clipping).

    ``TD3CNN(policy, env, **PLAIN_TD3)`` gives back SB3's defaults with the 0.1.0 encoder (pooled CNN + GRU,
    separate encoders); ``verbose=1`` and ``hyperparameter_report(model, reference="sb3_td3")`` list every value in
    force against SB3's.

    :param policy: "CnnPolicy" (Box image), "MultiInputPolicy" (Dict image + vectors), "MlpPolicy" or a policy class
    :param env: the environment or its registered id
    :param learning_rate: default learning rate (or schedule of the remaining progress, 1 -> 0) for both sides
    :param buffer_size: replay buffer capacity in transitions (None: 1M, or what half the available memory holds)
    :param learning_starts: env steps of uniform random actions before any gradient update
    :param batch_size: minibatch size of each gradient step (None: 96 for image observations, 256 otherwise)
    :param tau: Polyak coefficient of the target networks (their encoders too, in separate mode), in (0, 1]
    :param gamma: discount factor, in (0, 1]
    :param train_freq: update every ``train_freq`` steps, or ``(n, "step" | "episode")``
    :param gradient_steps: gradient steps per rollout (-1: as many as env steps collected)
    :param action_noise: exploration noise added to the actor's action; "auto": Gaussian, std 0.1; None: none
    :param replay_buffer_class: replay buffer class (None: SB3's choice)
    :param replay_buffer_kwargs: keyword arguments of the replay buffer
    :param optimize_memory_usage: SB3's memory-efficient buffer variant
    :param n_steps: n-step returns (1: plain TD)
    :param policy_delay: critic updates per actor and target update
    :param target_policy_noise: std of the Gaussian smoothing noise on target actions
    :param target_noise_clip: absolute clip of that noise
    :param actor_lr: actor (head + CNN) learning rate or schedule; None: ``learning_rate``
    :param critic_lr: critic (heads + CNN) learning rate or schedule; None: ``learning_rate``
    :param actor_grad_clip: limit on the global L2 norm of all actor gradients; None disables clipping
    :param critic_grad_clip: limit on the global L2 norm of all critic gradients; None disables clipping
    :param clip_check: what happens when a post-clip norm exceeds its limit: "raise" (GradientClipError), "warn", "off"
    :param nonfinite_grads: on a NaN/inf loss or gradient: "skip" that optimizer step (counted, logged) or "raise"
    :param encoder: "auto" ("shared" for this library's image policies, else "separate"), "separate" (SB3 layout:
        actor, critic and both targets own an encoder; joint clipping per side) or "shared" (DrQ-v2: one encoder
        trained by the critic loss only, the actor reads detached features, next observations are encoded by it
        without gradient, sharing frames with the observations; far less encoder work)
    :param replay_buffer: "auto" (store each frame once when the env is a frame stack: VecFrameStack or an env with a
        ``frame_stack`` attribute), "frame_stack" (always; ``frames`` from the policy's extractor) or "sb3" (SB3's
        default); ignored when ``replay_buffer_class`` is given
    :param preact_penalty: weight of ``mean(u ** 2)`` added to the actor loss, ``u`` being the actor's output before
        its tanh; keeps the actor off the +-1 plateaus where its gradient vanishes (0: off, plain TD3)
    :param augment: "shift" (DrQ: every replay image shifted by up to ``augment_pad`` pixels, obs and next obs of a
        sample by the same offset, before encoding), None (off) or "auto": "shift" for an image observation alone,
        off beside a vector (a Dict observation) and for vectors, as the pixels and the camera + vector recipes
        (on gymnasium's CarRacing-v3 through the wrappers: 432.5 against 44.8 at 80K frames, docs/results.md,
        section 6)
    :param augment_pad: the largest shift in pixels, >= 1 (DrQ-v2: 4 at 84 px)
    :param stats_window_size: episodes averaged in the rollout logs
    :param tensorboard_log: TensorBoard directory (None: none)
    :param policy_kwargs: policy keyword arguments (``features_extractor_kwargs``, ``net_arch``, ...)
    :param verbose: 0 silent, 1 info (prints the parameter report), 2 debug
    :param seed: random seed
    :param device: "auto", "cpu" or "cuda"
    :param _init_setup_model: build the networks now
    """

    #: ``train()`` keeps a :class:`TrainStats` in ``last_train_stats`` (:func:`~sb3_carla_td3.train_stats.measures_itself`).
    measures_train_stats: ClassVar[bool] = True
    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "MultiInputPolicy": MultiInputPolicy,
    }

    def __init__(
        self,
        policy: str | type[TD3Policy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 1e-3,
        buffer_size: int | None = None,
        learning_starts: int = 500,
        batch_size: int | None = None,
        tau: float = 0.005,
        gamma: float = 0.99,
        train_freq: int | tuple[int, str] = 1,
        gradient_steps: int = 1,
        action_noise: ActionNoise | str | None = "auto",
        replay_buffer_class: type | None = None,
        replay_buffer_kwargs: dict[str, Any] | None = None,
        optimize_memory_usage: bool = False,
        n_steps: int = 1,
        policy_delay: int = 2,
        target_policy_noise: float = 0.2,
        target_noise_clip: float = 0.5,
        actor_lr: float | Schedule | None = None,
        critic_lr: float | Schedule | None = None,
        actor_grad_clip: float | None = 1.0,
        critic_grad_clip: float | None = 10.0,
        clip_check: str = "raise",
        nonfinite_grads: str = "skip",
        encoder: str = "auto",
        replay_buffer: str = "auto",
        preact_penalty: float = 0.1,
        augment: str | None = "auto",
        augment_pad: int = 4,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        for name, limit in (("actor_grad_clip", actor_grad_clip), ("critic_grad_clip", critic_grad_clip)):
            if limit is not None and not (_is_real(limit) and limit > 0 and np.isfinite(limit)):
                raise ValueError(f"{name} must be a positive finite float or None (no clipping), got {limit!r}")
        if clip_check not in CLIP_CHECKS:
            raise ValueError(f"clip_check must be one of {CLIP_CHECKS}, got {clip_check!r}")
        if nonfinite_grads not in NONFINITE_MODES:
            raise ValueError(f"nonfinite_grads must be one of {NONFINITE_MODES}, got {nonfinite_grads!r}")
        if replay_buffer not in REPLAY_BUFFERS:
            raise ValueError(f"replay_buffer must be one of {REPLAY_BUFFERS}, got {replay_buffer!r}")
        policy, encoder = _resolve_encoder(policy, encoder)
        if isinstance(action_noise, str) and action_noise != "auto":
            raise ValueError(f"action_noise must be an ActionNoise, None (no noise) or 'auto', got {action_noise!r}")
        for name, size in (("buffer_size", buffer_size), ("batch_size", batch_size)):
            if size is not None and (isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1):
                raise ValueError(f"{name} must be a positive int or None (chosen from the spaces), got {size!r}")
        if not (_is_real(preact_penalty) and np.isfinite(preact_penalty) and preact_penalty >= 0):
            raise ValueError(f"preact_penalty must be a finite float >= 0 (0: off), got {preact_penalty!r}")
        if augment is not None and augment != "auto" and augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be 'auto', one of {AUGMENTATIONS} or None, got {augment!r}")
        if isinstance(augment_pad, bool) or not isinstance(augment_pad, int) or augment_pad < 1:
            raise ValueError(f"augment_pad must be an int >= 1 (pixels), got {augment_pad!r}")
        for name, lr in (("learning_rate", learning_rate), ("actor_lr", actor_lr), ("critic_lr", critic_lr)):
            if (lr is None and name != "learning_rate") or callable(lr):
                continue
            if not (_is_real(lr) and lr > 0 and np.isfinite(lr)):
                accepted = "a positive float or a schedule" + (" or None" if name != "learning_rate" else "")
                raise ValueError(f"{name} must be {accepted} (a callable of the remaining progress), got {lr!r}")
        learning_rate = float(learning_rate) if _is_real(learning_rate) else learning_rate  # NumPy floats: SB3 wants float
        self.actor_lr = float(actor_lr) if _is_real(actor_lr) else actor_lr
        self.critic_lr = float(critic_lr) if _is_real(critic_lr) else critic_lr
        self.actor_grad_clip = None if actor_grad_clip is None else float(actor_grad_clip)
        self.critic_grad_clip = None if critic_grad_clip is None else float(critic_grad_clip)
        self.clip_check = clip_check
        self.nonfinite_grads = nonfinite_grads
        self.encoder = encoder
        self.replay_buffer_choice = replay_buffer
        self.preact_penalty = float(preact_penalty)
        self.augment = augment
        self.augment_pad = augment_pad
        self._auto_noise = action_noise == "auto"
        self.nonfinite_skips = 0
        #: The latest update's statistics (None before the first ``train()`` call); see :class:`TrainStats`.
        self.last_train_stats: TrainStats | None = None
        self._slow_step_checked = False
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            buffer_size=buffer_size,  # type: ignore[arg-type]  # None: chosen in _setup_model
            learning_starts=learning_starts,
            batch_size=batch_size,  # type: ignore[arg-type]  # None: chosen in _setup_model
            tau=tau,
            gamma=gamma,
            train_freq=train_freq,
            gradient_steps=gradient_steps,
            action_noise=None if isinstance(action_noise, str) else action_noise,
            replay_buffer_class=replay_buffer_class,
            replay_buffer_kwargs=replay_buffer_kwargs,
            optimize_memory_usage=optimize_memory_usage,
            n_steps=n_steps,
            policy_delay=policy_delay,
            target_policy_noise=target_policy_noise,
            target_noise_clip=target_noise_clip,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=_init_setup_model,
        )

    def _setup_model(self) -> None:
        self._pass_frames_to_extractor()
        self._choose_replay_buffer()
        if self.n_steps > 1 and isinstance(self.observation_space, spaces.Dict) and self.replay_buffer_class is None:
            raise ValueError(
                f"n_steps={self.n_steps} is not supported for these Dict observations: SB3 has no n-step Dict replay "
                f"buffer, and this library's (DictFrameStackReplayBuffer) needs a frame-stacked image key, got "
                f"{self.observation_space}; wrap the env in VecFrameStack (with replay_buffer='auto') or pass n_steps=1"
            )
        if self.batch_size is None:
            self.batch_size = IMAGE_BATCH_SIZE if _has_image(self.observation_space) else VECTOR_BATCH_SIZE
        self._fit_replay_buffer()
        if self._auto_noise:
            n_actions = int(np.prod(self.action_space.shape or (1,)))
            sigma = np.full(n_actions, DEFAULT_EXPLORATION_NOISE)
            self.action_noise, self._auto_noise = NormalActionNoise(np.zeros(n_actions), sigma), False
        with warnings.catch_warnings():
            if self.n_steps > 1 and self.replay_buffer_kwargs.get("n_steps") == self.n_steps:  # given to our buffer
                warnings.filterwarnings("ignore", message=r"`n_steps=\d+` is ignored because a custom")
            super()._setup_model()
        loaded: Any = self.last_train_stats
        if isinstance(loaded, dict):  # a 0.1.0 checkpoint kept the statistics as a dict keyed by field name
            self.last_train_stats = TrainStats.from_record(loaded) if loaded else None
        self._shared = isinstance(self.policy, SharedEncoderPolicy)
        self.actor_lr_schedule = FloatSchedule(self.learning_rate if self.actor_lr is None else self.actor_lr)
        self.critic_lr_schedule = FloatSchedule(self.learning_rate if self.critic_lr is None else self.critic_lr)
        update_learning_rate(self.actor.optimizer, self.actor_lr_schedule(1.0))
        update_learning_rate(self.critic.optimizer, self.critic_lr_schedule(1.0))
        critic_encoder = self._shared_policy.encoder if self._shared else self.critic.features_extractor
        self._actor_params = OptimizedParams.from_optimizer("actor", self.actor.optimizer, self.actor.features_extractor)
        self._critic_params = OptimizedParams.from_optimizer("critic", self.critic.optimizer, critic_encoder)
        self.audit_optimizers()
        self._image_key = self.policy_kwargs.get("features_extractor_kwargs", {}).get("image_key", "image")
        if self.augment == "auto":  # the pixels recipe shifts its images; beside a vector (camera + vector) it does not
            space = self.observation_space
            self.augment = "shift" if isinstance(space, spaces.Box) and len(space.shape) == 3 else None
        if self.augment is not None:
            space = self.observation_space
            image = space.spaces.get(self._image_key) if isinstance(space, spaces.Dict) else space
            if not (isinstance(image, spaces.Box) and len(image.shape) == 3):
                raise ValueError(f"augment={self.augment!r} needs (C, H, W) images, but the observation space is {space}")
        if not isinstance(self.actor.mu[-1], th.nn.Tanh):
            raise ValueError(f"TD3CNN needs an actor whose last layer is a tanh, got {self.actor.mu[-1]!r}")
        if self.verbose >= 1:
            from sb3_carla_td3.reports import hyperparameter_report, parameter_report

            print(parameter_report(self))
            print(hyperparameter_report(self, reference="sb3_td3"))

    @property
    def _shared_policy(self) -> SharedEncoderPolicy:
        """The policy as a :class:`SharedEncoderPolicy` (only in shared mode)."""
        return cast(SharedEncoderPolicy, self.policy)

    def _pass_frames_to_extractor(self) -> None:
        """Give the default encoder the frame count the env reports (VecFrameStack's ``n_stack`` or the env's
        ``frame_stack``), so that the replay buffer and the encoder agree; raise when ``frames`` was set otherwise."""
        stacked = detect_frame_stack(self.env) if self.env is not None else None
        extractor_class = self.policy_kwargs.get("features_extractor_class")
        if stacked is None or extractor_class not in (None, CnnGruExtractor) or not isinstance(self.policy_class, type):
            return
        if not issubclass(self.policy_class, CnnPolicy):
            return
        extractor_kwargs = dict(self.policy_kwargs.get("features_extractor_kwargs") or {})
        frames = extractor_kwargs.get("frames")
        if frames is not None and frames != stacked:
            raise ValueError(
                f"features_extractor_kwargs frames={frames}, but the env stacks {stacked} frames (VecFrameStack n_stack "
                f"or the env's frame_stack); the encoder would split each observation into the wrong frames. Pass "
                f"frames={stacked} or leave it unset"
            )
        extractor_kwargs["frames"] = stacked
        self.policy_kwargs = {**self.policy_kwargs, "features_extractor_kwargs": extractor_kwargs}

    def _choose_replay_buffer(self) -> None:
        """Pick the frame-deduplicating buffer for frame-stacked image observations (unless a class was given)."""
        if self.replay_buffer_class is not None or self.replay_buffer_choice == "sb3" or self.optimize_memory_usage:
            return
        frames = detect_frame_stack(self.env) if self.env is not None else None
        if frames is None and self.replay_buffer_choice == "frame_stack":
            frames = self.policy_kwargs.get("features_extractor_kwargs", {}).get("frames")
        if frames is None or frames < 2:
            if self.replay_buffer_choice == "frame_stack":
                raise ValueError(
                    f"replay_buffer='frame_stack' needs observations that stack >= 2 frames, but the env reports no "
                    f"frame stack and the encoder was given {frames or 'no'} frame count for {self.observation_space}; "
                    "wrap the env in VecFrameStack, pass features_extractor_kwargs frames=N, or use replay_buffer='auto'"
                )
            return
        is_dict = isinstance(self.observation_space, spaces.Dict)
        self.replay_buffer_class = DictFrameStackReplayBuffer if is_dict else FrameStackReplayBuffer
        n_step = {"n_steps": self.n_steps, "gamma": self.gamma} if self.n_steps > 1 else {}
        self.replay_buffer_kwargs = {"frames": frames, **n_step, **self.replay_buffer_kwargs}

    def _fit_replay_buffer(self) -> None:
        """Choose ``buffer_size`` when it is None (SB3's 1M transitions, or as many as half the available memory holds),
        and refuse, before anything is allocated, a buffer that would need more memory than the machine has."""
        buffer_class = self.replay_buffer_class or (
            DictReplayBuffer if isinstance(self.observation_space, spaces.Dict) else ReplayBuffer
        )
        per_transition = replay_bytes_per_transition(
            buffer_class, self.observation_space, self.action_space, self.replay_buffer_kwargs, self.optimize_memory_usage
        )
        available = available_memory()
        if self.buffer_size is None:
            fits = int(available * AUTO_BUFFER_MEMORY_SHARE / per_transition) if available else MAX_AUTO_BUFFER_SIZE
            self.buffer_size = max(min(MAX_AUTO_BUFFER_SIZE, fits // 1000 * 1000), 1000)
            if self.buffer_size < MAX_AUTO_BUFFER_SIZE and self.verbose >= 1:
                print(
                    f"TD3CNN: buffer_size={self.buffer_size:,} transitions ({per_transition * self.buffer_size / 2**30:.1f} "
                    f"GiB), half of the {available / 2**30:.1f} GiB available; pass buffer_size to choose"
                )
        needed = per_transition * self.buffer_size
        if available is not None and needed > available:
            frame_stack = "" if issubclass(buffer_class, FrameStackReplayBuffer | DictFrameStackReplayBuffer) else (
                ", or store each frame once (wrap the env in VecFrameStack or give it a frame_stack attribute, "
                "then replay_buffer='auto' picks the frame-stack buffer)"
            )
            raise ReplayMemoryError(
                f"the replay buffer ({buffer_class.__name__}, buffer_size={self.buffer_size:,} transitions of "
                f"{per_transition / 1024:.1f} KiB) needs {needed / 2**30:.1f} GiB, but this machine has "
                f"{available / 2**30:.1f} GiB available. Pass a smaller buffer_size (at most "
                f"{int(available / per_transition):,} would fit; buffer_size=None chooses one){frame_stack}"
            )

    def audit_optimizers(self) -> None:
        """Raise :class:`OptimizerCoverageError` unless each optimizer steps exactly its side's trainable parameters.

        Every trainable actor parameter (its features extractor included) must be in the actor optimizer once, the
        same for the critic, none in both, targets in none, and no third optimizer may exist on the model.
        """
        names = {id(p): name for name, p in self.policy.named_parameters()}
        critic_params = list(self.critic.parameters())
        if self._shared:
            critic_params = list(self._shared_policy.encoder.parameters()) + critic_params
        audit_optimizers(
            expected={
                "actor": (self.actor.optimizer, list(self.actor.parameters())),
                "critic": (self.critic.optimizer, critic_params),
            },
            named_parameters=names,
            roots={"model": self, "policy": self.policy},
        )

    def _setup_learn(self, *args: Any, **kwargs: Any) -> Any:
        # Re-audit: an optimizer or parameter added after construction must not slip through unnoticed.
        self.audit_optimizers()
        return super()._setup_learn(*args, **kwargs)

    def _update_learning_rates(self) -> None:
        progress = self._current_progress_remaining
        actor_lr, critic_lr = self.actor_lr_schedule(progress), self.critic_lr_schedule(progress)
        update_learning_rate(self.actor.optimizer, actor_lr)
        update_learning_rate(self.critic.optimizer, critic_lr)
        self.logger.record("train/actor_learning_rate", actor_lr)
        self.logger.record("train/critic_learning_rate", critic_lr)

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        self.policy.set_training_mode(True)
        self._update_learning_rates()
        started = time.perf_counter()
        critic_updates: list[dict[str, float]] = []
        actor_updates: list[dict[str, float]] = []
        for _ in range(gradient_steps):
            self._n_updates += 1
            replay_data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma
            obs, next_obs = replay_data.observations, replay_data.next_observations
            if self.augment == "shift":
                obs, next_obs = shift_pair(obs, next_obs, self.augment_pad, self._image_key)

            # Separate: actor, critic and their targets encode raw observations with their own encoders.
            # Shared: one encoder; next_obs features are detached and the frames obs and next_obs share are encoded once.
            obs_input, next_input = self._shared_policy.encode_pair(obs, next_obs) if self._shared else (obs, next_obs)

            with th.no_grad():
                # Target policy smoothing: clipped Gaussian noise on the target actor's action.
                noise = th.randn_like(replay_data.actions) * self.target_policy_noise
                noise = noise.clamp(-self.target_noise_clip, self.target_noise_clip)
                next_actions = (self.actor_target(next_input) + noise).clamp(-1, 1)
                # Clipped double Q: min over the target critics.
                next_q = th.cat(self.critic_target(next_input, next_actions), dim=1)
                min_next_q, _ = th.min(next_q, dim=1, keepdim=True)
                target_q = replay_data.rewards + (1 - replay_data.dones) * discounts * min_next_q

            current_q = self.critic(obs_input, replay_data.actions)
            critic_loss = th.stack([F.mse_loss(q, target_q) for q in current_q]).sum()
            q_stats = q_statistics(current_q, target_q)
            critic_updates.append(self._optimizer_step(self._critic_params, critic_loss, self.critic_grad_clip, q_stats))

            if self._n_updates % self.policy_delay == 0:
                # Separate: the critic's own encoder encodes obs, so critic heads only ever see critic features.
                # Shared: actor and critic head read the critic-trained features. Either way the features are
                # detached and Q1 is differentiated w.r.t. the action only (see _policy_q).
                actor_input = obs_input.detach() if self._shared else obs
                policy_actions, preact = self._actor_forward(actor_input)
                actor_q = self._policy_q(actor_input, policy_actions)
                preact_sq = preact.pow(2).mean()
                actor_loss = -actor_q.mean() + self.preact_penalty * preact_sq
                # A tanh actor pinned at +-1 has ~0 gradient (saturation); one that acts alike on every observation
                # is blind (a dead encoder, spread ~0): both are measured on every actor update.
                actor_q_stats = {
                    "actor_q_mean": actor_q.mean(),
                    "actor_saturation": saturation_share(policy_actions),
                    "actor_preact_sq": preact_sq.detach(),
                    "actor_action_std": action_spread(policy_actions),
                }
                actor_updates.append(self._optimizer_step(self._actor_params, actor_loss, self.actor_grad_clip, actor_q_stats))
                polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
                polyak_update(self.actor.parameters(), self.actor_target.parameters(), self.tau)
                # Copy running stats, see SB3 GH issue #996
                polyak_update(self.critic_batch_norm_stats, self.critic_batch_norm_stats_target, 1.0)
                polyak_update(self.actor_batch_norm_stats, self.actor_batch_norm_stats_target, 1.0)

        elapsed = time.perf_counter() - started
        self._record_train_stats({"critic": critic_updates, "actor": actor_updates}, elapsed / max(gradient_steps, 1))
        self._warn_if_slow(elapsed, gradient_steps)

    def _actor_forward(self, actor_input: Any) -> tuple[th.Tensor, th.Tensor]:
        """The actor's actions and their pre-tanh values ``u`` (``actions = tanh(u)``).

        :param actor_input: observations (separate mode) or detached encoder features (shared mode)
        :return: (actions, pre-tanh values), each ``(batch, action_dim)``
        """
        features = self.actor.extract_features(actor_input, self.actor.features_extractor)
        preact = self.actor.mu[:-1](features)
        return self.actor.mu[-1](preact), preact

    def _policy_q(self, actor_input: Any, actions: th.Tensor) -> th.Tensor:
        """Q1 of the actor's actions for the actor loss, with a gradient w.r.t. ``actions`` only.

        The actor loss needs dQ/da, nothing else: the critic's features are computed under ``no_grad`` (separate mode:
        its own encoder on the raw observation; shared mode: the detached features given) and its first Q head runs
        on detached weights, so no graph is built through the critic encoder and no gradient reaches a critic
        parameter. Same value and actor gradient as ``critic.q1_forward(actor_input, actions)``, at less cost.

        :param actor_input: observations (separate mode) or detached encoder features (shared mode)
        :param actions: the actor's actions, ``(batch, action_dim)``, with gradient
        :return: ``(batch, 1)`` Q-values
        """
        with th.no_grad():
            features = self.critic.extract_features(actor_input, self.critic.features_extractor)
        q_head = self.critic.q_networks[0]
        weights = {name: param.detach() for name, param in q_head.named_parameters()}
        return th.func.functional_call(q_head, weights, (th.cat([features, actions], dim=1),))

    def _optimizer_step(
        self, params: OptimizedParams, loss: th.Tensor, max_norm: float | None, monitored: dict[str, th.Tensor]
    ) -> dict[str, float]:
        """Backward, measure, clip jointly, measure again, verify, then step (or skip a non-finite update).

        One host sync reads the loss, the pre-clip norms and the monitored statistics together (SB3's TD3 syncs
        once per update too, for ``loss.item()``). Only an update above the limit is scaled and measured again.

        :param params: the parameters this side's optimizer steps, split into encoder and head
        :param loss: the scalar loss of this side
        :param max_norm: the side's clip limit (None: no clipping)
        :param monitored: extra 0-d tensors to read in the same host sync, keyed by :class:`TrainStats` field
        :return: per-update floats keyed by :class:`TrainStats` field; an empty dict for a skipped update
        """
        side = params.name
        optimizer = self.actor.optimizer if side == "actor" else self.critic.optimizer
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        pre = measure_gradients(params)
        loss_key, pre_key = side_field(side, "loss"), side_field(side, "grad_norm_pre")
        keys = [loss_key, side_field(side, "cnn_grad_norm_pre"), side_field(side, "head_grad_norm_pre"), pre_key]
        tensors = [loss.detach(), pre.encoder, pre.head, pre.total, *monitored.values()]
        values = dict(zip([*keys, *monitored], th.stack([t.float().to(loss.device) for t in tensors]).tolist(), strict=True))

        pre_norm = values[pre_key]
        if not all_finite([values[loss_key], pre_norm]):
            message = f"non-finite {side} update at gradient step {self._n_updates}: loss={values[loss_key]}, "
            message += f"gradient norm={pre_norm}"
            if self.nonfinite_grads == "raise":
                raise NonFiniteGradientError(message + "; nonfinite_grads='raise'")
            optimizer.zero_grad(set_to_none=True)
            self.nonfinite_skips += 1
            message += "; the optimizer step was skipped (weights and optimizer state unchanged)"
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            return {}

        clipped, post_norm = False, pre_norm
        if max_norm is not None and pre_norm > max_norm:
            clipped, post_norm = True, clip_to_norm(params, max_norm, pre.total)
        check_clip(side, post_norm, max_norm, self.clip_check)
        optimizer.step()
        return values | {side_field(side, "grad_norm_post"): post_norm, side_field(side, "clip_fraction"): float(clipped)}

    def _record_train_stats(self, updates: dict[str, list[dict[str, float]]], seconds_per_update: float) -> None:
        """Log the means over this call's updates per side (``train/<field>``) and keep the latest values in
        ``last_train_stats``.

        :param updates: per side ("critic", "actor"), one dict per update of this call (empty for a skipped update)
        :param seconds_per_update: wall-clock seconds per gradient step of this call
        """
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        previous = self.last_train_stats or TrainStats()
        latest: dict[str, float] = {}
        for side, side_updates in updates.items():
            stepped = [update for update in side_updates if update]
            if not stepped:
                continue
            # The clip fraction is the mean of each update's 0/1 "clipped": the same mean as every other value.
            for key in stepped[-1]:
                latest[key] = float(np.mean([u[key] for u in stepped]))
                self.logger.record(f"train/{key}", latest[key])
                if key != side_field(side, "clip_fraction"):
                    latest[key] = stepped[-1][key]
            counted = f"n_{side}_updates"
            latest[counted] = (getattr(previous, counted) or 0) + len(stepped)
            post = side_field(side, "grad_norm_post")
            latest[side_field(side, "grad_norm_post_max")] = max(u[post] for u in stepped)
        self.logger.record("train/nonfinite_skips", self.nonfinite_skips)
        latest |= {"n_updates": self._n_updates, "nonfinite_skips": self.nonfinite_skips}
        self.last_train_stats = previous.updated(latest | {"seconds_per_update": seconds_per_update})

    def _warn_if_slow(self, seconds: float, gradient_steps: int) -> None:
        """Warn once when CPU gradient steps with the pooled per-frame encoder are slow, naming the cheaper option."""
        if self._slow_step_checked or gradient_steps < 1:
            return
        self._slow_step_checked = True
        per_step = seconds / gradient_steps
        extractor = self._shared_policy.encoder if self._shared else self.critic.features_extractor
        if self.device.type != "cpu" or getattr(extractor, "cnn_type", None) != "pooled" or per_step < SLOW_STEP_WARNING_S:
            return
        warnings.warn(
            f"TD3CNN: one gradient step takes {per_step:.2f} s on CPU with the pooled per-frame CNN+GRU encoder "
            f"(10,000 steps would take about {per_step * 1e4 / 3600:.1f} h). The stacked NatureCNN is about 50x "
            "cheaper: policy_kwargs=dict(encoder_preset='nature') (the default), or train on a GPU.",
            RuntimeWarning,
            stacklevel=2,
        )

    def _excluded_save_params(self) -> list[str]:
        # Rebuilt from the optimizers by _setup_model() on load.
        return [*super()._excluded_save_params(), "_actor_params", "_critic_params"]

