"""The env half of the driving recipe as gymnasium wrappers, for any driving env.

The recipe's env side is four rules: a soft brake (:class:`PedalMapping`), an end to episodes where the car stands
still (:class:`StuckTermination`) or stays off the road (:class:`OffTrackTermination`), and an action held for several
simulator steps (:class:`ActionRepeat`). The library's own envs apply the same rules internally through the same
functions (:func:`pedal_control`, :class:`StreakCounter`); the wrappers bring them to an env of your own, e.g.
gymnasium's ``CarRacing-v3`` with the readers :func:`carracing_speed` and :func:`carracing_off_track`::

    env = gymnasium.make("CarRacing-v3")
    env = ActionRepeat(env, repeat=4)
    env = PedalMapping(env, max_brake=0.3, mode="linear")
    env = StuckTermination(env, speed=carracing_speed, stuck_steps=50, penalty=-100.0)
    env = OffTrackTermination(env, off_track=carracing_off_track, offtrack_steps=10, penalty=-100.0)

Penalties are rewards *added* when the rule ends the episode, so they are ``<= 0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import RecordConstructorArgs

__all__ = [
    "PEDAL_MAPPINGS",
    "ActionRepeat",
    "OffTrackTermination",
    "PedalMapping",
    "StreakCounter",
    "StuckTermination",
    "carracing_off_track",
    "carracing_speed",
    "pedal_control",
]

#: How the throttle_brake action ``a`` in [-1, 1] becomes the pedals (see :func:`pedal_control`).
PEDAL_MAPPINGS: tuple[str, ...] = ("split", "linear")
_CARRACING_LOW = np.array([-1.0, 0.0, 0.0])  # CarRacing's [steer, gas, brake] bounds
_StepResult = tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]  # what gymnasium's step returns


def pedal_control(steer: float, throttle_brake: float, max_brake: float, mode: str) -> tuple[float, float, float]:
    """Map ``[steer, throttle_brake]`` onto CarRacing's ``[steer, gas, brake]`` pedals.

    With ``mode="split"`` a positive ``throttle_brake`` is the gas pedal and a negative one the brake pedal, scaled
    by ``max_brake``. With ``mode="linear"`` [-1, 1] first maps linearly onto [-max_brake, 1] (gas above 0, brake
    below), so that 0, the centre of a tanh actor, is gas ``(1 - max_brake) / 2``.

    :param steer: steering in [-1, 1], -1 full left (passed through)
    :param throttle_brake: the pedal action in [-1, 1] (clip before calling)
    :param max_brake: brake pedal at ``throttle_brake = -1``, in (0, 1]
    :param mode: ``"split"`` or ``"linear"`` (see :data:`PEDAL_MAPPINGS`)
    :return: ``(steer, gas, brake)``, gas and brake in [0, 1], at most one of them non-zero
    """
    pedal = throttle_brake
    if mode == "linear":  # [-1, 1] onto [-max_brake, 1]: the centre of a tanh actor gives some gas
        pedal = -max_brake + (pedal + 1.0) / 2.0 * (1.0 + max_brake)
        max_brake = 1.0
    return steer, max(pedal, 0.0), max_brake * max(-pedal, 0.0)


class StreakCounter:
    """Counts consecutive steps on which a condition holds; the streak rules (stuck, off track) are built on it.

    :param limit: streak length, in steps, at which :attr:`reached` becomes true; 0 disables the rule (never reached)
    """

    def __init__(self, limit: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int | np.integer) or limit < 0:
            raise ValueError(f"limit must be an int >= 0 (0: never reached), got {limit!r}")
        self.limit = int(limit)
        self.count = 0

    def reset(self) -> None:
        """Start a new episode: no streak."""
        self.count = 0

    def update(self, hit: bool) -> bool:
        """Count one step.

        :param hit: whether the condition held on this step; ``False`` ends the streak
        :return: :attr:`reached` after this step
        """
        self.count = self.count + 1 if hit else 0
        return self.reached

    @property
    def reached(self) -> bool:
        """Whether the streak has lasted ``limit`` steps (never when ``limit`` is 0)."""
        return 0 < self.limit <= self.count


def _carracing_car(env: gym.Env) -> Any:
    """:return: the Box2D car of gymnasium's CarRacing under ``env``; raises before the first reset, when there is none"""
    base = env.unwrapped
    if not hasattr(base, "car"):
        raise TypeError(f"expected gymnasium's CarRacing under the wrappers, got {type(base).__name__}, which has no car")
    if base.car is None:
        raise RuntimeError(f"{type(base).__name__} has no car before reset(): call reset() first")
    return base.car


def carracing_speed(env: gym.Env) -> float:
    """Speed of gymnasium's CarRacing car, for ``StuckTermination(env, speed=carracing_speed)``.

    :param env: ``gymnasium.make("CarRacing-v3")`` or any wrapper of a ``CarRacing``
    :return: the hull's speed in m/s (Box2D units per second; the car is about 5 units long)
    """
    return float(math.hypot(*_carracing_car(env).hull.linearVelocity))


def carracing_off_track(env: gym.Env) -> bool:
    """Whether gymnasium's CarRacing car is off the road, for ``OffTrackTermination(env, off_track=carracing_off_track)``.

    :param env: ``gymnasium.make("CarRacing-v3")`` or any wrapper of a ``CarRacing``
    :return: ``True`` when none of the four wheels touches a road tile
    """
    return all(not wheel.tiles for wheel in _carracing_car(env).wheels)


def _pedal_layout_fits(space: spaces.Box) -> bool:
    """:return: whether ``space`` holds ``[steer, throttle_brake]`` in [-1, 1] or CarRacing's ``[steer, gas, brake]``"""
    if space.shape == (2,):
        return bool(np.all(space.low <= -1.0) and np.all(space.high >= 1.0))
    return space.shape == (3,) and bool(np.all(space.low <= _CARRACING_LOW) and np.all(space.high >= 1.0))


def _check_penalty(owner: str, penalty: float) -> float:
    """:return: ``penalty`` as a float; raises ``ValueError`` unless it is a finite number <= 0 (a reward added)"""
    if isinstance(penalty, bool) or not isinstance(penalty, int | float | np.floating) or not math.isfinite(penalty):
        raise ValueError(f"{owner} penalty must be a finite number <= 0 (a reward added), got {penalty!r}")
    if penalty > 0:
        raise ValueError(
            f"{owner} penalty must be <= 0: it is a reward added when the episode ends, so a cost is negative; "
            f"got {penalty!r} (pass {-penalty!r})"
        )
    return float(penalty)


def _check_steps(owner: str, name: str, value: int) -> int:
    """:return: ``value``; raises ``ValueError`` unless it is an int >= 1"""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{owner} {name} must be an int >= 1, got {value!r}")
    return int(value)


class PedalMapping(gym.ActionWrapper, RecordConstructorArgs):
    """Drive with ``[steer, throttle_brake]`` in [-1, 1] and a soft brake.

    Exposes ``Box(-1, 1, (2,), float32)``: steer (-1 full left) and one pedal axis mapped by :func:`pedal_control`
    (``mode="split"``: a > 0 gas, a < 0 brake ``-a * max_brake``; ``mode="linear"``: [-1, 1] onto [-max_brake, 1]
    first). The action is checked (finite, shape (2,)) and clipped to [-1, 1] before the mapping. The inner action
    is either ``[steer, throttle_brake]`` in [-1, 1] (Box of shape (2,), negative is the brake; it gets
    ``gas - brake``) or CarRacing's ``[steer, gas, brake]`` (Box of shape (3,), gas and brake in [0, 1]), detected
    from the inner action space and cast to its dtype.

    :param env: the env to drive; its action space must be one of the two layouts above
    :param max_brake: brake pedal at ``throttle_brake = -1``, in (0, 1]; CarRacing locks its wheels above 0.9, and
        a softer brake lets random exploration move the car
    :param mode: ``"linear"`` or ``"split"`` (see above)
    """

    def __init__(self, env: gym.Env, max_brake: float = 0.3, mode: str = "linear") -> None:
        RecordConstructorArgs.__init__(self, max_brake=max_brake, mode=mode)  # lets env.spec.make() rebuild the stack
        gym.ActionWrapper.__init__(self, env)
        if isinstance(max_brake, bool) or not isinstance(max_brake, int | float | np.floating) or not 0 < max_brake <= 1:
            raise ValueError(f"{type(self).__name__} max_brake must be a number in (0, 1], got {max_brake!r}")
        if mode not in PEDAL_MAPPINGS:
            raise ValueError(f"{type(self).__name__} mode must be one of {PEDAL_MAPPINGS}, got {mode!r}")
        inner = env.action_space
        if not (isinstance(inner, spaces.Box) and _pedal_layout_fits(inner)):
            raise ValueError(
                f"{type(self).__name__} needs an inner action space Box (2,) [steer, throttle_brake] in [-1, 1] or "
                f"Box (3,) [steer, gas, brake] with steer in [-1, 1] and gas, brake in [0, 1]; got {inner}"
            )
        self.max_brake = float(max_brake)
        self.mode = mode
        self._inner_space: spaces.Box = inner
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

    def action(self, action: Any) -> np.ndarray:
        """Map ``[steer, throttle_brake]`` onto the inner env's action.

        :param action: finite array of shape (2,); values outside [-1, 1] are clipped
        :return: ``[steer, gas - brake]`` or ``[steer, gas, brake]``, in the inner action space's dtype
        """
        try:
            values = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError):
            values = None
        if values is None or values.shape != (2,) or not np.all(np.isfinite(values)):
            raise ValueError(f"action must be a finite array of shape (2,) in {self.action_space}, got {action!r}")
        steer, throttle_brake = np.clip(values, -1.0, 1.0).tolist()
        steer, gas, brake = pedal_control(steer, throttle_brake, self.max_brake, self.mode)
        control = [steer, gas, brake] if self._inner_space.shape == (3,) else [steer, gas - brake]
        return np.array(control, dtype=self._inner_space.dtype)


class _StreakTermination(gym.Wrapper, RecordConstructorArgs):
    """End the episode, with a penalty, once a per-step condition has held for ``limit`` consecutive steps.

    Subclasses name the rule (:attr:`reason`) and read the condition (:meth:`_hit`). An episode that the inner env
    already ends on this step passes through unchanged (its flags and reason are kept, no penalty is added).

    :param env: the env to watch
    :param limit: consecutive steps, >= 1
    :param limit_name: the subclass's name for ``limit``, for the message of a bad value
    :param penalty: reward added on the step that ends the episode, <= 0
    """

    reason: str = ""
    #: Whether an unpenalised ending is a truncation (bootstrapped) rather than a termination.
    truncate_without_penalty: bool = False

    def __init__(self, env: gym.Env, limit: int, limit_name: str, penalty: float) -> None:
        gym.Wrapper.__init__(self, env)
        self.penalty = _check_penalty(type(self).__name__, penalty)
        self.counter = StreakCounter(_check_steps(type(self).__name__, limit_name, limit))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Reset the inner env and the streak.

        :param seed: passed to the inner env
        :param options: passed to the inner env
        :return: the inner env's observation and info
        """
        self.counter.reset()
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> _StepResult:
        """Step the inner env, count the streak and end the episode when it reaches the limit.

        :param action: passed to the inner env
        :return: observation, reward (plus the penalty when this rule ends the episode), terminated, truncated, info
            (``info["reason"]`` names the rule when it ends the episode, unless the inner env gave a reason)
        """
        obs, reward, terminated, truncated, info = self.env.step(action)
        reached = self.counter.update(self._hit(info))
        if reached and not (terminated or truncated):
            reward = float(reward) + self.penalty
            if self.penalty == 0.0 and self.truncate_without_penalty:
                truncated = True
            else:
                terminated = True
            if info.get("reason") is None:
                info["reason"] = self.reason
        return obs, reward, terminated, truncated, info

    def _hit(self, info: dict[str, Any]) -> bool:
        """:return: whether the condition held on the step that returned ``info``"""
        raise NotImplementedError

    def _read(self, source: str | Callable[[gym.Env], Any], info: dict[str, Any], what: str) -> Any:
        """Read a measurement from ``info[source]`` or from ``source(self.env)``.

        :param source: an ``info`` key, or a callable that gets the wrapped env
        :param info: the inner env's info of this step
        :param what: the argument's name, for the message
        :return: the measurement
        """
        if callable(source):
            return source(self.env)
        if source not in info:
            raise KeyError(
                f"{type(self).__name__} reads {what} from info[{source!r}], but the inner env's info holds the keys "
                f"{sorted(info)}; pass {what}= the info key your env uses, or a callable {what}(env) (for gymnasium's "
                f"CarRacing: {what}=carracing_{what})"
            )
        return info[source]


class StuckTermination(_StreakTermination):
    """End the episode when the car stays slower than ``stuck_speed`` for ``stuck_steps`` consecutive steps.

    The ending step gets ``penalty`` added to its reward and ``info["reason"] = "stuck"``. A non-zero penalty makes
    it a termination (standing still was the agent's doing); with a zero penalty it is a truncation, so the value
    bootstraps. With gymnasium's CarRacing the car also stands still during the 1-s camera zoom-in at the start
    (49 physics frames after ``reset``, about 12 steps under ``ActionRepeat(4)``), which counts here.

    :param env: the env to watch
    :param speed: where the speed (m/s) comes from: an ``info`` key (default ``"speed"``), or a callable
        ``speed(env) -> float`` that gets the wrapped env (:func:`carracing_speed` for gymnasium's CarRacing)
    :param stuck_steps: consecutive slow steps that end the episode, >= 1
    :param stuck_speed: speed under which a step counts as slow, m/s, >= 0
    :param penalty: reward added on the ending step, <= 0 (0: a truncation)
    """

    reason = "stuck"
    truncate_without_penalty = True

    def __init__(
        self,
        env: gym.Env,
        speed: str | Callable[[gym.Env], float] = "speed",
        stuck_steps: int = 50,
        stuck_speed: float = 1.0,
        penalty: float = -100.0,
    ) -> None:
        RecordConstructorArgs.__init__(
            self, speed=speed, stuck_steps=stuck_steps, stuck_speed=stuck_speed, penalty=penalty
        )  # lets env.spec.make() rebuild the stack, as gymnasium's own wrappers do
        super().__init__(env, stuck_steps, "stuck_steps", penalty)
        if not (callable(speed) or isinstance(speed, str)):
            raise ValueError(f"{type(self).__name__} speed must be an info key (str) or a callable speed(env), got {speed!r}")
        if isinstance(stuck_speed, bool) or not isinstance(stuck_speed, int | float | np.floating) or not stuck_speed >= 0:
            raise ValueError(f"{type(self).__name__} stuck_speed must be a number >= 0 (m/s), got {stuck_speed!r}")
        self.speed = speed
        self.stuck_speed = float(stuck_speed)

    def _hit(self, info: dict[str, Any]) -> bool:
        return float(self._read(self.speed, info, "speed")) < self.stuck_speed


class OffTrackTermination(_StreakTermination):
    """Terminate the episode when the car stays off the road for ``offtrack_steps`` consecutive steps.

    The ending step gets ``penalty`` added to its reward and ``info["reason"] = "offtrack"``; it is always a
    termination. Wrap this inside :class:`StuckTermination` for CarRacingEnv's order (off track wins over stuck when
    both end the same step); the outer wrapper only ends episodes that the inner ones have not.

    :param env: the env to watch
    :param off_track: where the off-track flag comes from: an ``info`` key holding a bool (default ``"off_track"``),
        or a callable ``off_track(env) -> bool`` that gets the wrapped env (:func:`carracing_off_track` for
        gymnasium's CarRacing)
    :param offtrack_steps: consecutive off-track steps that end the episode, >= 1
    :param penalty: reward added on the ending step, <= 0
    """

    reason = "offtrack"

    def __init__(
        self,
        env: gym.Env,
        off_track: str | Callable[[gym.Env], bool] = "off_track",
        offtrack_steps: int = 10,
        penalty: float = -100.0,
    ) -> None:
        RecordConstructorArgs.__init__(self, off_track=off_track, offtrack_steps=offtrack_steps, penalty=penalty)  # see above
        super().__init__(env, offtrack_steps, "offtrack_steps", penalty)
        if not (callable(off_track) or isinstance(off_track, str)):
            raise ValueError(
                f"{type(self).__name__} off_track must be an info key (str) or a callable off_track(env), got {off_track!r}"
            )
        self.off_track = off_track

    def _hit(self, info: dict[str, Any]) -> bool:
        return bool(self._read(self.off_track, info, "off_track"))


class ActionRepeat(gym.Wrapper, RecordConstructorArgs):
    """Apply each action for ``repeat`` inner steps and sum their rewards.

    Stops early when the inner env terminates or truncates; the observation and info are those of the last inner
    step taken.

    :param env: the env to step
    :param repeat: inner steps per step, >= 1 (gymnasium's CarRacing: 4 steps = 0.08 s)
    """

    def __init__(self, env: gym.Env, repeat: int = 4) -> None:
        RecordConstructorArgs.__init__(self, repeat=repeat)
        gym.Wrapper.__init__(self, env)
        self.repeat = _check_steps(type(self).__name__, "repeat", repeat)

    def step(self, action: Any) -> _StepResult:
        """Step the inner env up to ``repeat`` times with ``action``.

        :param action: passed to the inner env every time
        :return: the last observation, the summed reward, terminated, truncated and the last info
        """
        total = 0.0
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            if terminated or truncated:
                break
        return obs, total, terminated, truncated, info
