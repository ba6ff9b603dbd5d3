"""Reward terms of the CARLA env as pure functions of plain numbers (no ``carla`` import, no state).

Each shaping function returns an unweighted value in a fixed range; :func:`compute_reward_terms` multiplies
them by the weights (>= 0) of a :class:`~sb3_carla_td3.envs.carla.config.RewardConfig` and adds its penalties
(<= 0, the convention of :mod:`sb3_carla_td3.envs.penalties`) on the steps they apply to, so nothing is
hard-coded here. The env's reward is the sum of the weighted terms, and ``info["reward_terms"]`` holds them.

Progress pays per metre of arc length gained along the route (negative when driving backwards), never per
waypoint index, so a route resampled more finely pays exactly the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sb3_carla_td3.envs.carla.config import RewardConfig

#: Keys of ``info["reward_terms"]``, in the order they are computed.
REWARD_TERMS: tuple[str, ...] = (
    "efficiency",
    "lane_keeping",
    "comfort",
    "safety",
    "progress",
    "collision",
    "off_road",
    "stuck",
)


@dataclass(frozen=True)
class RewardInputs:
    """What the reward of one step depends on, measured after the tick.

    :param speed_mps: ego speed in m/s, >= 0.
    :param target_speed_mps: cruise speed here in m/s, > 0 (the route file's speed, else the config's).
    :param heading_error_rad: ego yaw minus route tangent yaw, wrapped to [-pi, pi].
    :param lateral_m: signed distance from the route polyline in metres (positive: right of the route).
    :param half_lane_width_m: half the width of the route's lane at the projection in metres, > 0.
    :param progress_m: arc length gained along the route during this step in metres (negative = backwards).
    :param steer_change: this step's steer minus the previous step's, in [-2, 2].
    :param throttle_brake_change: the same for the throttle/brake action, in [-2, 2].
    :param lane_invasion: whether the lane-invasion sensor reported a crossed marking this step.
    :param collision: whether the collision sensor reported an event this step.
    :param off_road: whether the lateral deviation exceeded the termination threshold this step.
    :param stuck: whether the episode ends "stuck" after this step.
    """

    speed_mps: float
    target_speed_mps: float
    heading_error_rad: float
    lateral_m: float
    half_lane_width_m: float
    progress_m: float
    steer_change: float
    throttle_brake_change: float
    lane_invasion: bool
    collision: bool
    off_road: bool
    stuck: bool = False


def efficiency(speed_mps: float, heading_error_rad: float, target_speed_mps: float) -> float:
    """Speed along the route relative to the target speed.

    Rises linearly from 0 (stopped) to 1 (at the target speed), falls back to 0 at twice the target speed and
    is negative when driving against the route.

    :param speed_mps: ego speed in m/s, >= 0.
    :param heading_error_rad: heading error in rad; only its cosine is used.
    :param target_speed_mps: cruise speed in m/s, > 0.
    :return: the unweighted term in [-1, 1].
    """
    ratio = speed_mps * math.cos(heading_error_rad) / target_speed_mps
    value = ratio if ratio <= 1.0 else 2.0 - ratio
    return float(min(1.0, max(-1.0, value)))


def lane_keeping(lateral_m: float, half_lane_width_m: float, heading_error_rad: float, heading_tolerance_rad: float) -> float:
    """Penalty for leaving the lane centre and for pointing away from the route.

    :param lateral_m: signed lateral deviation in metres; a deviation of one half lane width counts fully.
    :param half_lane_width_m: half lane width in metres, > 0.
    :param heading_error_rad: heading error in rad; ``heading_tolerance_rad`` or more counts fully.
    :param heading_tolerance_rad: heading error of full penalty in rad, > 0.
    :return: the unweighted term in [-1, 0] (0 on the centre line, pointing along the route).
    """
    lateral_error = min(abs(lateral_m) / half_lane_width_m, 1.0)
    heading_error = min(abs(heading_error_rad) / heading_tolerance_rad, 1.0)
    return -0.5 * (lateral_error + heading_error)


def comfort(steer_change: float, throttle_brake_change: float) -> float:
    """Penalty for jerky control: the squared change of both actions since the previous step.

    Computed from actions rather than differentiated accelerations, which are noisy at 20 Hz.

    :param steer_change: steer difference, in [-2, 2].
    :param throttle_brake_change: throttle/brake difference, in [-2, 2].
    :return: the unweighted term in [-1, 0].
    """
    return -(steer_change**2 + throttle_brake_change**2) / 8.0


def safety(lane_invasion: bool, heading_error_rad: float) -> float:
    """Penalty for crossing a lane marking and for driving the wrong way.

    :param lane_invasion: whether a lane marking was crossed this step (-1).
    :param heading_error_rad: heading error in rad; beyond pi/2 the wrong-way part grows linearly to -1 at pi.
    :return: the unweighted term in [-2, 0].
    """
    wrong_way = min(max((abs(heading_error_rad) - math.pi / 2) / (math.pi / 2), 0.0), 1.0)
    return -(1.0 if lane_invasion else 0.0) - wrong_way


def progress(progress_m: float) -> float:
    """Arc length gained along the route, in metres (the weight is the reward per metre).

    :param progress_m: change of the route projection's arc length this step, in metres.
    :return: the unweighted term, equal to ``progress_m``.
    """
    return float(progress_m)


def compute_reward_terms(inputs: RewardInputs, config: RewardConfig) -> dict[str, float]:
    """Weighted reward terms of one step; their sum is the step reward.

    :param inputs: the step's measurements.
    :param config: weights, penalties and heading tolerance.
    :return: one float per name in :data:`REWARD_TERMS`.
    """
    terms = {
        "efficiency": config.efficiency_weight
        * efficiency(inputs.speed_mps, inputs.heading_error_rad, inputs.target_speed_mps),
        "lane_keeping": config.lane_keeping_weight
        * lane_keeping(inputs.lateral_m, inputs.half_lane_width_m, inputs.heading_error_rad, config.heading_tolerance_rad),
        "comfort": config.comfort_weight * comfort(inputs.steer_change, inputs.throttle_brake_change),
        "safety": config.safety_weight * safety(inputs.lane_invasion, inputs.heading_error_rad),
        "progress": config.progress_weight * progress(inputs.progress_m),
        # Penalties are <= 0 and added as they are (sb3_carla_td3.envs.penalties).
        "collision": config.collision_penalty if inputs.collision else 0.0,
        "off_road": config.off_road_penalty if inputs.off_road else 0.0,
        "stuck": config.stuck_penalty if inputs.stuck else 0.0,
    }
    return {name: float(value) for name, value in terms.items()}
