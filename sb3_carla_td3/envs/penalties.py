"""The one sign convention of every penalty in this library: a penalty is a number <= 0 that is added to the reward.

It holds for both envs and the wrappers: ``CarRacingConfig.offtrack_penalty`` and ``stuck_penalty``, CARLA's
``reward.collision_penalty``, ``reward.off_road_penalty`` and ``reward.stuck_penalty``, and the ``penalty`` argument
of :class:`~sb3_carla_td3.envs.wrappers.StuckTermination` and :class:`~sb3_carla_td3.envs.wrappers.OffTrackTermination`.
A cost is therefore written with its sign (``stuck_penalty: -100.0``), and the same YAML value means the same thing
for either env. Weights (``*_weight``) are a different kind of field: they are >= 0 and scale a term whose own sign
their help text states.
"""

from __future__ import annotations

import math
from typing import Any

from sb3_carla_td3.errors import ConfigError

#: Why a penalty must be <= 0, quoted by every message about one.
PENALTY_RULE = "a penalty is added to the reward"


def check_penalty(name: str, value: Any) -> float:
    """Check that a penalty follows the convention and return it as a float.

    :param name: the key as the user wrote it, e.g. ``reward.stuck_penalty`` (quoted in the message).
    :param value: the configured value.
    :return: ``float(value)``, a finite number <= 0.
    :raises ConfigError: naming the key, the value and the expected sign when ``value`` is positive (with the value
        to write instead), and the key and value when it is not a finite number.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number <= 0 ({PENALTY_RULE}), got {value!r}")
    if value > 0:
        raise ConfigError(f"{name}={value!r} must be <= 0 ({PENALTY_RULE}); write {-value!r} for a cost of {value!r}")
    return float(value)
