"""Replay buffers that store each frame of a frame-stacked image observation once.

SB3's ``ReplayBuffer`` keeps the whole ``(frames*C, H, W)`` stack twice per transition (obs and next_obs), so every
frame is stored ``2 * frames`` times. The buffers here keep one uint8 frame per step in a per-env ring and rebuild both
stacks from indices when sampling, following the ``VecFrameStack`` convention: channel-first, newest frame in the last
``C`` channels, slots before the episode start all zero.

Layout (per env): frame ``g`` (a global, ever-increasing id) lives in ring slot ``g % capacity``. A transition stores
the id ``g`` of its obs's newest frame and ``hist``, how many older frames of the stack belong to the episode; its
next_obs's newest frame is always ``g + 1``. A continuing step therefore writes one frame. When obs does not continue the
previous next_obs (episode start, or an env reset without ``done``), the previous next frame (e.g. the true final frame
of a terminated or truncated episode) stays in its slot and the new stack starts in the following slots. Non-image keys
of a Dict observation are stored once per slot in the same way, so the final next-vector is kept too. The ring holds
``buffer_size + buffer_size // 64 + frames + 1`` frames per env; a transition whose frames were overwritten (possible
only with many very short episodes) is never sampled.

With ``n_steps > 1`` both buffers return n-step samples exactly as SB3's ``NStepReplayBuffer`` does (the discounted
reward sum up to the first episode end, next_obs and done of the window's last transition, ``discounts`` =
``gamma ** steps``): the window is a run of stored transitions, so it needs no extra memory.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import BaseBuffer, DictReplayBuffer, ReplayBuffer
from stable_baselines3.common.type_aliases import DictReplayBufferSamples, ReplayBufferSamples
from stable_baselines3.common.vec_env import VecEnv, VecFrameStack, VecNormalize, unwrap_vec_wrapper

#: The frame ring has ``buffer_size // SLACK_DIVISOR`` spare slots per env for episode-boundary frames.
SLACK_DIVISOR = 64


def _frame_stack_shape(space: spaces.Space, frames: int, what: str) -> tuple[int, int, int]:
    """Check that ``space`` is a channel-first uint8 frame stack whose channel count is a multiple of ``frames``.

    :param space: the (sub)space holding the stacked image
    :param frames: number of stacked frames
    :param what: how to name the space in error messages
    :return: the image shape ``(frames*C, H, W)``
    """
    if isinstance(frames, bool) or not isinstance(frames, int | np.integer) or not 1 <= frames <= 256:
        raise ValueError(f"frames must be an int in [1, 256] (the n_stack of VecFrameStack), got {frames!r}")
    if not isinstance(space, spaces.Box) or len(space.shape) != 3 or space.dtype != np.uint8:
        raise ValueError(
            f"{what} must be a 3-D uint8 Box (frames*C, H, W) holding a frame stack, got {space!r}; "
            "use SB3's ReplayBuffer for other observations"
        )
    channels = space.shape[0]
    if channels % frames != 0:
        raise ValueError(
            f"frames={frames} does not divide the {channels} channels of {what} {space.shape}: a channel-first stack of "
            "`frames` frames of C channels has frames*C channels; pass the n_stack used by VecFrameStack"
        )
    return tuple(int(d) for d in space.shape)  # type: ignore[return-value]


class _FrameStackBuffer:
    """Storage, ``add`` bookkeeping, sampling and memory accounting shared by the two frame-stack buffers.

    Per env: ``frame_data`` rows ``e * (capacity + 1) + slot`` hold one uint8 frame each (row ``+ capacity`` stays zero
    and stands for the frames before an episode start); ``vector_data[key][e, slot]`` holds the non-image values of
    the step whose newest frame is in ``slot``. Per transition: ``gid`` (id of obs's newest frame) and ``hist``.
    ``next_gid[e]`` counts the frames written so far, so ids ``>= next_gid[e] - capacity`` are still in the ring.
    """

    buffer_size: int
    n_envs: int
    pos: int
    full: bool
    action_dim: int
    device: th.device

    def _setup(
        self,
        action_space: spaces.Space,
        optimize_memory_usage: bool,
        handle_timeout_termination: bool,
        frames: int,
        image_shape: tuple[int, int, int],
        vector_specs: dict[str, tuple[tuple[int, ...], np.dtype]],
        n_steps: int,
        gamma: float,
    ) -> None:
        if isinstance(n_steps, bool) or not isinstance(n_steps, int | np.integer) or n_steps < 1:
            raise ValueError(f"n_steps must be an int >= 1 (1: one-step TD targets), got {n_steps!r}")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1] (the discount of the n-step returns), got {gamma!r}")
        self.n_steps, self.gamma = int(n_steps), float(gamma)
        if optimize_memory_usage:
            raise ValueError(
                f"optimize_memory_usage={optimize_memory_usage!r} is not supported by {type(self).__name__}, which "
                "already stores each frame once; pass optimize_memory_usage=False"
            )
        self.optimize_memory_usage, self.handle_timeout_termination = False, handle_timeout_termination
        self.frames, self.image_shape, self.channels = int(frames), image_shape, image_shape[0] // frames
        n, e = max(self.buffer_size // self.n_envs, 1), self.n_envs
        self.buffer_size = n
        self.actions = np.zeros((n, e, self.action_dim), dtype=ReplayBuffer._maybe_cast_dtype(action_space.dtype))
        self.rewards, self.dones, self.timeouts = (np.zeros((n, e), dtype=np.float32) for _ in range(3))
        self.capacity = n + n // SLACK_DIVISOR + self.frames + 1
        self.frame_data = np.zeros((e * (self.capacity + 1), self.channels * image_shape[1] * image_shape[2]), np.uint8)
        self.vector_data = {k: np.zeros((e, self.capacity, *shp), dtype=dt) for k, (shp, dt) in vector_specs.items()}
        self.gid, self.hist = np.zeros((n, e), dtype=np.int64), np.zeros((n, e), dtype=np.uint8)
        self.last_next_image = np.zeros((e, *image_shape), dtype=np.uint8)
        self.last_next_vectors = {k: np.zeros((e, *shp), dtype=dt) for k, (shp, dt) in vector_specs.items()}
        self.offsets = np.arange(-(self.frames - 1), 2, dtype=np.int64)  # obs's oldest frame .. next_obs's newest
        self._reset_rings()

    def _reset_rings(self) -> None:
        self.next_gid, self.cur_hist = np.zeros(self.n_envs, dtype=np.int64), np.zeros(self.n_envs, dtype=np.int64)
        self.pending, self.prev_done = np.zeros(self.n_envs, dtype=bool), np.zeros(self.n_envs, dtype=bool)

    def reset(self) -> None:
        """Empty the buffer (``pos = 0``, ``full = False``) and forget the stored frames."""
        super().reset()  # type: ignore[misc]
        self._reset_rings()

    @property
    def nbytes(self) -> int:
        """Bytes held by all arrays of the buffer (frames, per-step vectors, per-transition arrays)."""
        arrays: list[np.ndarray] = [self.frame_data, self.gid, self.hist, self.last_next_image, self.actions]
        arrays += [self.rewards, self.dones, self.timeouts, *self.vector_data.values(), *self.last_next_vectors.values()]
        return int(sum(a.nbytes for a in arrays))

    @property
    def bytes_per_transition(self) -> float:
        """Bytes per transition from the actual arrays, leaving out the few that do not grow with the capacity.

        Those are, per env, the zero frame, ``frames + 1`` spare slots and the copy of the last next_obs. Multiply by a
        transition count to project the memory of a larger buffer.
        """
        slot = self.frame_data.shape[1] + sum(a[0, 0].nbytes for a in self.vector_data.values())
        copies = self.last_next_image.nbytes + sum(a.nbytes for a in self.last_next_vectors.values())
        fixed = self.n_envs * (self.frame_data.shape[1] + (self.frames + 1) * slot) + copies
        return (self.nbytes - fixed) / (self.buffer_size * self.n_envs)

    def _check_batch(self, name: str, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        value = np.asarray(value)
        if value.shape != (self.n_envs, *shape):
            raise ValueError(f"{name} must have shape {(self.n_envs, *shape)} (n_envs first), got {value.shape}")
        return value

    def _check_shift(self, image: np.ndarray, next_image: np.ndarray) -> None:
        c = self.channels
        if self.frames == 1 or np.array_equal(next_image[:, :-c], image[:, c:]):
            return
        env = next(e for e in range(self.n_envs) if not np.array_equal(next_image[e, :-c], image[e, c:]))
        raise ValueError(
            f"The observation is not a frame stack with frames={self.frames} frames of {c} channel(s), newest last: "
            f"for env {env}, the {self.frames - 1} older frames of next_obs (channels 0:{image.shape[1] - c}) differ "
            f"from the {self.frames - 1} newer frames of obs (channels {c}:{image.shape[1]}). Wrap the env in "
            f"VecFrameStack(venv, n_stack={self.frames}) (channel-first images), pass the matching `frames`, or use "
            "SB3's ReplayBuffer"
        )

    def _write_frame(self, env: int, gid: int, frame: np.ndarray) -> None:
        self.frame_data[env * (self.capacity + 1) + gid % self.capacity] = frame.reshape(-1)

    def _continues(self, env: int, image: np.ndarray, vectors: dict[str, np.ndarray]) -> bool:
        if not self.pending[env] or self.prev_done[env] or not np.array_equal(image, self.last_next_image[env]):
            return False
        return all(np.array_equal(vectors[k], self.last_next_vectors[k][env]) for k in self.vector_data)

    def _add_env(
        self,
        env: int,
        image: np.ndarray,
        next_image: np.ndarray,
        vectors: dict[str, np.ndarray],
        next_vectors: dict[str, np.ndarray],
    ) -> None:
        """Store one env's frames and vectors (``next_image`` is ``image`` shifted by one frame, already checked)."""
        f, c = self.frames, self.channels
        if self._continues(env, image, vectors):  # obs == previous next_obs: its frames are stored already
            g, h = int(self.next_gid[env]) - 1, min(int(self.cur_hist[env]) + 1, f - 1)
        else:  # episode start (or a reset without done): store the stack's frames after its all-zero prefix
            zeros = 0
            while zeros < f - 1 and not image[zeros * c : (zeros + 1) * c].any():
                zeros += 1
            start = int(self.next_gid[env])
            for j in range(zeros, f):
                self._write_frame(env, start + j - zeros, image[j * c : (j + 1) * c])
            g, h = start + f - 1 - zeros, f - 1 - zeros
            for k, arr in self.vector_data.items():
                arr[env, g % self.capacity] = vectors[k]
        self._write_frame(env, g + 1, next_image[-c:])  # may be a final frame: the next stack then starts after it
        for k, arr in self.vector_data.items():
            arr[env, (g + 1) % self.capacity] = self.last_next_vectors[k][env] = next_vectors[k]
        self.last_next_image[env] = next_image
        self.next_gid[env], self.cur_hist[env], self.pending[env] = g + 2, h, True
        self.gid[self.pos, env], self.hist[self.pos, env] = g, h

    def _add_arrays(
        self,
        image: np.ndarray,
        next_image: np.ndarray,
        vectors: dict[str, np.ndarray],
        next_vectors: dict[str, np.ndarray],
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        image = self._check_batch("obs image", image, self.image_shape)
        next_image = self._check_batch("next_obs image", next_image, self.image_shape)
        self._check_shift(image, next_image)
        for e in range(self.n_envs):
            env_vectors, env_next_vectors = ({k: v[e] for k, v in d.items()} for d in (vectors, next_vectors))
            self._add_env(e, image[e], next_image[e], env_vectors, env_next_vectors)
        self.prev_done[:] = np.asarray(done).reshape(self.n_envs)
        self.actions[self.pos] = np.array(action).reshape((self.n_envs, self.action_dim))
        self.rewards[self.pos] = np.array(reward)
        self.dones[self.pos] = np.array(done)
        if self.handle_timeout_termination:
            self.timeouts[self.pos] = np.array([info.get("TimeLimit.truncated", False) for info in infos])
        self.pos = (self.pos + 1) % self.buffer_size
        self.full = self.full or self.pos == 0

    def _sampleable(self, batch_inds: np.ndarray, env_indices: np.ndarray) -> np.ndarray:
        oldest = self.gid[batch_inds, env_indices] - self.hist[batch_inds, env_indices]
        return oldest >= self.next_gid[env_indices] - self.capacity

    def sampleable_mask(self) -> np.ndarray:
        """Which stored transitions can be sampled: all, unless many very short episodes made the frame ring
        overwrite frames that the oldest transitions still need.

        :return: boolean array ``(size(), n_envs)``, indexed like the transition positions
        """
        upper = self.buffer_size if self.full else self.pos
        batch_inds, env_indices = np.divmod(np.arange(upper * self.n_envs), self.n_envs)
        return self._sampleable(batch_inds, env_indices).reshape(upper, self.n_envs)

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> Any:
        """Sample transitions uniformly among the sampleable ones (typed Any: each subclass returns its base's type).

        :param batch_size: number of transitions
        :param env: VecNormalize whose statistics normalize observations and rewards, if any
        :return: SB3's ``ReplayBufferSamples`` (``DictReplayBufferSamples`` for the Dict buffer)
        """
        upper = self.buffer_size if self.full else self.pos
        if upper == 0:
            raise ValueError(f"cannot sample batch_size={batch_size} transitions from an empty {type(self).__name__}")
        batch_inds = np.random.randint(0, upper, size=batch_size)
        env_indices = np.random.randint(0, self.n_envs, size=batch_size)
        redo = ~self._sampleable(batch_inds, env_indices)
        while redo.any():  # rejection keeps the draw uniform over the sampleable transitions
            k = int(redo.sum())
            batch_inds[redo] = np.random.randint(0, upper, size=k)
            env_indices[redo] = np.random.randint(0, self.n_envs, size=k)
            redo[redo] = ~self._sampleable(batch_inds[redo], env_indices[redo])
        return self._get_samples(batch_inds, env=env, env_indices=env_indices)  # type: ignore[attr-defined]

    def _stack(self, batch_inds: np.ndarray, env_indices: np.ndarray, first: int) -> np.ndarray:
        """The frame stacks of the given transitions: their obs (``first=0``) or their next_obs (``first=1``)."""
        cap = self.capacity
        g = self.gid[batch_inds, env_indices]
        offsets = self.offsets[first : first + self.frames]
        before_start = offsets < -self.hist[batch_inds, env_indices].astype(np.int64)[:, None]
        rows = np.where(before_start, cap, (g[:, None] + offsets) % cap) + (env_indices * (cap + 1))[:, None]
        return np.take(self.frame_data, rows.ravel(), axis=0).reshape(len(batch_inds), *self.image_shape)

    def _n_step_window(
        self, batch_inds: np.ndarray, env_indices: np.ndarray, env: VecNormalize | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """SB3's ``NStepReplayBuffer`` arithmetic on the stored transitions.

        :return: the position of each window's last transition, the (normalized) discounted reward sums ``(n, 1)``
            and the bootstrap discounts ``gamma ** steps`` ``(n, 1)`` (None for one-step samples)
        """
        if self.n_steps == 1:
            rewards = self._normalize_reward(self.rewards[batch_inds, env_indices].reshape(-1, 1), env)  # type: ignore[attr-defined]
            return batch_inds, rewards, None
        window = (batch_inds[:, None] + np.arange(self.n_steps)) % self.buffer_size
        envs = env_indices[:, None]
        newest = window == (self.pos - 1) % self.buffer_size  # ends every window: the slot after it is the oldest
        ends = self.dones[window, envs].astype(bool) | self.timeouts[window, envs].astype(bool) | newest
        steps_to_end = np.where(ends.any(axis=1), ends.argmax(axis=1), self.n_steps - 1)
        inside = np.arange(self.n_steps) <= steps_to_end[:, None]
        rewards = self._normalize_reward(self.rewards[window, envs], env)  # type: ignore[attr-defined]
        returns = (rewards * self.gamma ** np.arange(self.n_steps, dtype=np.float32) * inside).sum(axis=1, keepdims=True)
        discounts = self.gamma ** inside.sum(axis=1, keepdims=True).astype(np.float32)
        return (batch_inds + steps_to_end) % self.buffer_size, returns.astype(np.float32), discounts

    def _gather(
        self, batch_inds: np.ndarray, env_indices: np.ndarray | None, env: VecNormalize | None
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray], tuple[th.Tensor | None, ...]]:
        """Rebuild obs and next_obs (images and vectors, numpy) and the actions, dones, rewards and discounts (tensors;
        discounts None for one-step samples). With ``n_steps > 1``, next_obs and done are those of each window's last
        transition."""
        if env_indices is None:  # the same draw as SB3's _get_samples
            env_indices = np.random.randint(0, high=self.n_envs, size=(len(batch_inds),))
        if not self._sampleable(batch_inds, env_indices).all():
            raise ValueError("batch_inds/env_indices name transitions whose frames were overwritten; see sampleable_mask()")
        last, rewards, discounts = self._n_step_window(batch_inds, env_indices, env)
        cap = self.capacity
        g, g_last = self.gid[batch_inds, env_indices], self.gid[last, env_indices]
        image, next_image = self._stack(batch_inds, env_indices, 0), self._stack(last, env_indices, 1)
        vectors = {k: arr[env_indices, g % cap] for k, arr in self.vector_data.items()}
        next_vectors = {k: arr[env_indices, (g_last + 1) % cap] for k, arr in self.vector_data.items()}
        dones = self.dones[last, env_indices] * (1 - self.timeouts[last, env_indices])  # as SB3
        tensors = tuple(
            None if a is None else self.to_torch(a, copy=False)  # type: ignore[attr-defined]
            for a in (self.actions[batch_inds, env_indices], dones.reshape(-1, 1), rewards, discounts)
        )
        return image, next_image, vectors, next_vectors, tensors


class FrameStackReplayBuffer(_FrameStackBuffer, ReplayBuffer):
    """``ReplayBuffer`` for a frame-stacked uint8 image observation that stores each frame once.

    Samples are exactly those SB3's ``ReplayBuffer`` returns (uint8 stacks, float32 rest, timeouts removed from
    ``dones``), at about ``1 / (2 * frames)`` of its image memory. Usable as ``replay_buffer_class``.

    :param buffer_size: maximum number of transitions (divided by ``n_envs``, as in SB3)
    :param observation_space: a uint8 Box ``(frames*C, H, W)``, newest frame in the last ``C`` channels
    :param action_space: the action space
    :param device: PyTorch device the samples are put on
    :param n_envs: number of parallel environments
    :param optimize_memory_usage: must be False (accepted for SB3's constructor call)
    :param handle_timeout_termination: treat ``infos[i]["TimeLimit.truncated"]`` as truncation, not termination
    :param frames: number of stacked frames (``n_stack`` of ``VecFrameStack``)
    :param image_key: ignored (the observation is the image); accepted so both buffers take the same kwargs
    :param n_steps: n-step returns as SB3's ``NStepReplayBuffer`` (1: one-step samples, ``discounts`` None)
    :param gamma: discount of the n-step returns
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Box,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        frames: int = 4,
        image_key: str = "image",
        n_steps: int = 1,
        gamma: float = 0.99,
    ) -> None:
        image_shape = _frame_stack_shape(observation_space, frames, "observation_space")
        BaseBuffer.__init__(self, buffer_size, observation_space, action_space, device, n_envs=n_envs)
        self._setup(
            action_space, optimize_memory_usage, handle_timeout_termination, frames, image_shape, {}, n_steps, gamma
        )

    def add(
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        """Store one step of every env (SB3's ``ReplayBuffer.add`` semantics).

        :param obs: stacked observations ``(n_envs, frames*C, H, W)``
        :param next_obs: stacked next observations (the true final observation where ``done``)
        :param action: actions ``(n_envs, action_dim)``
        :param reward: rewards ``(n_envs,)``
        :param done: episode ends ``(n_envs,)``, terminations and truncations alike
        :param infos: one info dict per env (``"TimeLimit.truncated"`` marks a truncation)
        :raises ValueError: if next_obs is not obs shifted by one frame (not a ``frames``-frame stack)
        """
        self._add_arrays(obs, next_obs, {}, {}, action, reward, done, infos)

    def _get_samples(
        self, batch_inds: np.ndarray, env: VecNormalize | None = None, env_indices: np.ndarray | None = None
    ) -> ReplayBufferSamples:
        """Rebuild the given transitions.

        :param batch_inds: transition positions
        :param env: VecNormalize to normalize with, if any
        :param env_indices: env of each position; drawn at random like SB3 when None
        :return: SB3's ``ReplayBufferSamples``
        """
        obs, next_obs, _, _, (actions, dones, rewards, discounts) = self._gather(batch_inds, env_indices, env)
        obs_t, next_t = (self.to_torch(cast(np.ndarray, self._normalize_obs(o, env)), copy=False) for o in (obs, next_obs))
        return ReplayBufferSamples(obs_t, actions, next_t, dones, rewards, discounts)  # type: ignore[arg-type]


class DictFrameStackReplayBuffer(_FrameStackBuffer, DictReplayBuffer):
    """``DictReplayBuffer`` for Dict observations with one frame-stacked uint8 image key; each frame is stored once.

    The other keys are stored once per step (float keys as float32). Samples are exactly those SB3's
    ``DictReplayBuffer`` returns. Usable as ``replay_buffer_class``.

    :param buffer_size: maximum number of transitions (divided by ``n_envs``, as in SB3)
    :param observation_space: a Dict whose ``image_key`` is a uint8 Box ``(frames*C, H, W)`` and other keys are Boxes
    :param action_space: the action space
    :param device: PyTorch device the samples are put on
    :param n_envs: number of parallel environments
    :param optimize_memory_usage: must be False (accepted for SB3's constructor call)
    :param handle_timeout_termination: treat ``infos[i]["TimeLimit.truncated"]`` as truncation, not termination
    :param frames: number of stacked frames (``n_stack`` of ``VecFrameStack``)
    :param image_key: the key of the frame-stacked image
    :param n_steps: n-step returns as SB3's ``NStepReplayBuffer`` (1: one-step samples, ``discounts`` None)
    :param gamma: discount of the n-step returns
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Dict,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        frames: int = 4,
        image_key: str = "image",
        n_steps: int = 1,
        gamma: float = 0.99,
    ) -> None:
        if not isinstance(observation_space, spaces.Dict) or image_key not in observation_space.spaces:
            raise ValueError(f"observation_space must be a Dict with the image key {image_key!r}, got {observation_space!r}")
        image_shape = _frame_stack_shape(observation_space[image_key], frames, f"observation_space[{image_key!r}]")
        vector_specs = {}
        for key, sub in observation_space.spaces.items():
            if key == image_key:
                continue
            if not isinstance(sub, spaces.Box):
                raise ValueError(f"observation_space[{key!r}] must be a Box (the non-image keys are arrays), got {sub!r}")
            dtype = np.dtype(np.float32) if np.issubdtype(sub.dtype, np.floating) else np.dtype(sub.dtype)
            vector_specs[key] = (tuple(sub.shape), dtype)
        self.image_key = image_key
        BaseBuffer.__init__(self, buffer_size, observation_space, action_space, device, n_envs=n_envs)
        self._setup(
            action_space, optimize_memory_usage, handle_timeout_termination, frames, image_shape, vector_specs, n_steps, gamma
        )

    def _split(self, obs: dict[str, np.ndarray], name: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if not isinstance(obs, dict) or set(obs) != set(self.observation_space.spaces):
            keys = sorted(obs) if isinstance(obs, dict) else type(obs).__name__
            raise ValueError(f"{name} must be a dict with the keys {sorted(self.observation_space.spaces)}, got {keys}")
        vectors = {
            k: self._check_batch(f"{name}[{k!r}]", v, self.obs_shape[k]).astype(self.vector_data[k].dtype, copy=False)
            for k, v in obs.items()
            if k != self.image_key
        }
        return obs[self.image_key], vectors

    def add(  # type: ignore[override]
        self,
        obs: dict[str, np.ndarray],
        next_obs: dict[str, np.ndarray],
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        """Store one step of every env (SB3's ``DictReplayBuffer.add`` semantics).

        :param obs: observations, each value with ``n_envs`` first
        :param next_obs: next observations (the true final observation where ``done``)
        :param action: actions ``(n_envs, action_dim)``
        :param reward: rewards ``(n_envs,)``
        :param done: episode ends ``(n_envs,)``, terminations and truncations alike
        :param infos: one info dict per env (``"TimeLimit.truncated"`` marks a truncation)
        :raises ValueError: if the image of next_obs is not that of obs shifted by one frame
        """
        image, vectors = self._split(obs, "obs")
        next_image, next_vectors = self._split(next_obs, "next_obs")
        self._add_arrays(image, next_image, vectors, next_vectors, action, reward, done, infos)

    def _get_samples(  # type: ignore[override]
        self, batch_inds: np.ndarray, env: VecNormalize | None = None, env_indices: np.ndarray | None = None
    ) -> DictReplayBufferSamples:
        """Rebuild the given transitions.

        :param batch_inds: transition positions
        :param env: VecNormalize to normalize with, if any
        :param env_indices: env of each position; drawn at random like SB3 when None
        :return: SB3's ``DictReplayBufferSamples``
        """
        image, next_image, vectors, next_vectors, (actions, dones, rewards, discounts) = self._gather(
            batch_inds, env_indices, env
        )
        obs_t, next_t = (
            {k: self.to_torch(v, copy=False) for k, v in self._normalize_obs(o, env).items()}  # type: ignore[union-attr]
            for o in ({self.image_key: image, **vectors}, {self.image_key: next_image, **next_vectors})
        )
        keys = list(self.observation_space.spaces)
        obs_d, next_d = {k: obs_t[k] for k in keys}, {k: next_t[k] for k in keys}
        return DictReplayBufferSamples(obs_d, actions, next_d, dones, rewards, discounts)  # type: ignore[arg-type]


def detect_frame_stack(env: VecEnv) -> int | None:
    """How many frames the env's image observation stacks, if it says so.

    :param env: the (wrapped) vectorised env
    :return: ``n_stack`` of a VecFrameStack wrapper, else the envs' ``frame_stack`` attribute, else the
        ``stack_size`` of gymnasium's ``FrameStackObservation`` when it stacks single-channel frames into a
        channel-first ``(stack_size, H, W)`` image, else None
    """
    stacker = unwrap_vec_wrapper(env, VecFrameStack)
    if stacker is not None:
        return int(stacker.stacked_obs.n_stack)
    for attribute in ("frame_stack", "stack_size"):
        try:
            values = env.get_attr(attribute)
        except AttributeError:
            continue
        if not values or values[0] is None:
            continue
        shape: tuple[int, ...] = tuple(getattr(env.observation_space, "shape", None) or ())
        if attribute == "stack_size" and (len(shape) != 3 or shape[0] != values[0]):
            continue  # FrameStackObservation of RGB or channel-last frames: not one channel-first image
        return int(values[0])
    return None


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _space_bytes(space: spaces.Space) -> int:
    if isinstance(space, spaces.Dict):
        return sum(_space_bytes(sub) for sub in space.spaces.values())
    dtype = np.dtype(np.float32) if np.issubdtype(space.dtype or np.float32, np.floating) else np.dtype(space.dtype)
    return int(np.prod(space.shape or (1,))) * dtype.itemsize


def replay_bytes_per_transition(
    buffer_class: type,
    observation_space: spaces.Space,
    action_space: spaces.Space,
    buffer_kwargs: dict[str, Any] | None = None,
    optimize_memory_usage: bool = False,
) -> float:
    """Bytes one stored transition takes in ``buffer_class``, computed from the spaces before anything is allocated.

    :param buffer_class: a frame-stack buffer of this module, or SB3's (Dict)ReplayBuffer (other classes are
        estimated as SB3's)
    :param observation_space: the observation space
    :param action_space: the action space
    :param buffer_kwargs: the buffer's keyword arguments (``frames``, ``image_key``)
    :param optimize_memory_usage: SB3's variant that stores each observation once
    :return: bytes per transition (actions, rewards, dones and timeouts included)
    """
    kwargs = buffer_kwargs or {}
    scalars = _space_bytes(action_space) + 3 * 4  # actions; rewards, dones, timeouts as float32
    if issubclass(buffer_class, _FrameStackBuffer):
        image_key = kwargs.get("image_key", "image")
        if isinstance(observation_space, spaces.Dict):
            image = observation_space.spaces[image_key]
            rest = _space_bytes(observation_space) - _space_bytes(image)
        else:
            image, rest = observation_space, 0
        frame = _space_bytes(image) / int(kwargs.get("frames", 4))
        return (frame + rest) * (1 + 1 / SLACK_DIVISOR) + 8 + 1 + scalars  # + gid (int64) and hist (uint8)
    copies = 1 if optimize_memory_usage else 2  # obs and next_obs
    return copies * _space_bytes(observation_space) + scalars
