"""CARLA Leaderboard metrics for CARLA episodes: route completion, infractions by kind and per km, driving score.

The formula is the CARLA Leaderboard's (https://leaderboard.carla.org/, "Evaluation and metrics"; version 1.0, whose
reference implementation is ``leaderboard/utils/statistics_manager.py`` of github.com/carla-simulator/leaderboard;
the collision, red-light and stop-sign coefficients are unchanged in 2.x, https://leaderboard.carla.org/evaluation_v2_1):

- **route completion** ``RC``: percentage of the route's length driven, 100 once the route end is reached;
- **infraction penalty** ``P``: the product over infractions of their coefficients, pedestrian collision 0.50, vehicle
  collision 0.60, static collision 0.65, red light 0.70, stop sign 0.80; off-road driving multiplies it by
  ``1 - off-road % / 100`` (the 1.0 docs say that share of the route "will not be considered" for route completion;
  the reference code applies it as this factor of the penalty instead, which gives the same driving score);
- **driving score** ``DS = RC * P`` per route, and the mean over routes as the global score (so is ``RC`` and ``P``);
- **infractions per km**: total count over the total km driven, a route's km being ``RC / 100 * length``, at least
  1 m (1.0's code sums per-route rates; the later code divides totals, as here);
- route deviation and agent blocked end the route without a coefficient of their own (the route completion stops).

What :class:`~sb3_carla_td3.envs.carla.env.CarlaEnv` reports maps onto this with these differences, said in every
report: its episodes end at the first collision ("collision"), at ``max_lateral_deviation_m`` from the route (3 m by
default, a route deviation; the leaderboard's is 30 m) and after ``stuck_seconds`` below ``stuck_speed_mps``
(10 s: agent blocked; the leaderboard's is 180 s); red lights and stop signs are not detected, so their counts are
None ("not measured") and the penalty leaves them out: the driving score is an upper bound where they happen.
This module is pure Python; it reads only the env's ``info`` dicts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Infraction kinds, in report order.
INFRACTION_KINDS: tuple[str, ...] = (
    "collisions_pedestrian",
    "collisions_vehicle",
    "collisions_static",
    "red_light",
    "stop_sign",
    "off_road",
    "lane_invasion",
    "agent_blocked",
    "route_deviation",
)
#: Leaderboard penalty coefficient of each infraction (1.0's statistics_manager.py; the same in 2.x).
PENALTY_COEFFICIENTS: dict[str, float] = {
    "collisions_pedestrian": 0.50,
    "collisions_vehicle": 0.60,
    "collisions_static": 0.65,
    "red_light": 0.70,
    "stop_sign": 0.80,
}
#: Kinds CarlaEnv cannot detect yet: reported as None ("not measured"), left out of the penalty.
NOT_MEASURED: tuple[str, ...] = ("red_light", "stop_sign")
#: Least km a route counts as driven for the per-km rates (the leaderboard's 0.001 km).
MIN_DRIVEN_KM = 0.001
#: ``info["reason"]`` values of CarlaEnv that are leaderboard events ending the route.
ENDING_EVENTS = {"stuck": "agent_blocked", "off_route": "route_deviation"}


def collision_kind(other_type_id: str | None) -> str:
    """The infraction kind of a collision with an actor of blueprint ``other_type_id``.

    CARLA 0.9.16's ``CollisionEvent.other_actor`` for a static map object (a wall, a pole, a building) could not be
    confirmed offline: it may be None (CarlaEnv's sensor records ``""`` then) or an actor whose ``type_id`` starts
    with ``"static."``; both count as static, as does anything that is neither a walker nor a vehicle (traffic signs
    and lights are ``"traffic.*"`` actors), which is how the leaderboard's collision test sorts them.

    :param other_type_id: the other actor's ``type_id``; "" or None when the event carried no actor
    :return: "collisions_pedestrian", "collisions_vehicle" or "collisions_static"
    """
    type_id = (other_type_id or "").lower()
    if type_id.startswith("walker."):
        return "collisions_pedestrian"
    if type_id.startswith("vehicle."):
        return "collisions_vehicle"
    return "collisions_static"


@dataclass
class DrivingEpisode:
    """What one evaluation episode did, in the leaderboard's terms.

    :param route_length_m: the route's length in metres, > 0
    :param progress_m: the furthest arc length reached along the route in metres
    :param completed: the route end was reached
    :param off_road_m: route metres driven outside every driving lane
    :param infractions: count per kind of :data:`INFRACTION_KINDS`; None: not measured
    :param end_reason: the env's ``info["reason"]`` at the end (None: not reported)
    """

    route_length_m: float
    progress_m: float = 0.0
    completed: bool = False
    off_road_m: float = 0.0
    infractions: dict[str, int | None] = field(default_factory=lambda: empty_infractions())
    end_reason: str | None = None


def empty_infractions() -> dict[str, int | None]:
    """:return: zero of every kind, None for the kinds in :data:`NOT_MEASURED`"""
    return {kind: None if kind in NOT_MEASURED else 0 for kind in INFRACTION_KINDS}


def route_completion(episode: DrivingEpisode) -> float:
    """:return: percentage of the route driven, in [0, 100]; 100 when the route was completed"""
    if episode.completed:
        return 100.0
    return float(min(max(100.0 * episode.progress_m / episode.route_length_m, 0.0), 100.0))


def off_road_percentage(episode: DrivingEpisode) -> float:
    """:return: route metres driven off-road as a percentage of the route length, in [0, 100]"""
    return float(min(max(100.0 * episode.off_road_m / episode.route_length_m, 0.0), 100.0))


def infraction_penalty(infractions: Mapping[str, int | None], off_road_percent: float = 0.0) -> float:
    """The leaderboard's infraction penalty: ``prod(coefficient ** count) * (1 - off_road_percent / 100)``.

    :param infractions: count per kind; kinds without a coefficient, and None counts, do not change it
    :param off_road_percent: share of the route driven off-road in percent, [0, 100]
    :return: the penalty, in [0, 1] (1: no infraction)
    """
    penalty = 1.0
    for kind, coefficient in PENALTY_COEFFICIENTS.items():
        count = infractions.get(kind)
        if count:
            penalty *= coefficient**count
    return penalty * (1.0 - min(max(off_road_percent, 0.0), 100.0) / 100.0)


def driving_score(route_completion_percent: float, penalty: float) -> float:
    """:return: ``route completion * penalty`` (the leaderboard's ``score_composed``), >= 0, in percent"""
    return max(route_completion_percent * penalty, 0.0)


def episode_scores(episode: DrivingEpisode) -> dict[str, Any]:
    """The leaderboard numbers of one episode.

    :param episode: the episode
    :return: ``route_completion`` (%), ``infraction_penalty``, ``driving_score`` (%), ``driven_km``,
        ``off_road_percent``, ``infractions`` (count per kind, None: not measured), ``end_reason``
    """
    rc, off_road = route_completion(episode), off_road_percentage(episode)
    penalty = infraction_penalty(episode.infractions, off_road)
    return {
        "route_completion": rc,
        "infraction_penalty": penalty,
        "driving_score": driving_score(rc, penalty),
        "driven_km": max(rc / 100.0 * episode.route_length_m / 1000.0, MIN_DRIVEN_KM),
        "off_road_percent": off_road,
        "infractions": dict(episode.infractions),
        "end_reason": episode.end_reason,
    }


def aggregate_scores(episodes: Sequence[DrivingEpisode]) -> dict[str, Any]:
    """The leaderboard's global record over ``episodes`` (routes).

    :param episodes: at least one episode
    :return: means (and population std) of ``route_completion``, ``infraction_penalty`` and ``driving_score``;
        ``driven_km`` (total); ``infractions`` (total per kind, None when not measured); ``infractions_per_km``
        (total / total driven km, None when not measured); ``episodes`` (the per-episode scores)
    :raises ValueError: without episodes
    """
    if not episodes:
        raise ValueError("aggregate_scores needs at least one episode, got none")
    scores = [episode_scores(e) for e in episodes]
    result: dict[str, Any] = {"n_episodes": len(scores)}
    for key in ("route_completion", "infraction_penalty", "driving_score"):
        values = [s[key] for s in scores]
        mean = sum(values) / len(values)
        result[key] = mean
        result[f"{key}_std"] = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    driven_km = sum(s["driven_km"] for s in scores)
    totals: dict[str, int | None] = {}
    for kind in INFRACTION_KINDS:
        counts = [s["infractions"].get(kind) for s in scores]
        totals[kind] = None if any(c is None for c in counts) else sum(int(c or 0) for c in counts)
    result["driven_km"] = driven_km
    result["infractions"] = totals
    result["infractions_per_km"] = {k: None if v is None else v / driven_km for k, v in totals.items()}
    result["episodes"] = scores
    return result


class LeaderboardTracker:
    """Builds a :class:`DrivingEpisode` from CarlaEnv's ``info`` dicts, one episode at a time.

    Reads ``route_length_m`` (reset and step), ``route_progress_m``, ``collision_types`` (``type_id`` of each
    collision's other actor), ``lane_invasions`` (events this step), ``off_driving_lane`` (the ego is outside every
    driving lane) and ``reason``. Envs whose infos lack ``route_length_m`` (CarRacing) give no episode.
    """

    def __init__(self) -> None:
        self._episode: DrivingEpisode | None = None
        self._off_road = False

    def start(self, reset_info: Mapping[str, Any]) -> None:
        """Begin an episode.

        :param reset_info: the info of ``env.reset()``
        """
        length = reset_info.get("route_length_m")
        self._episode = DrivingEpisode(float(length)) if length else None
        self._off_road = False

    def update(self, info: Mapping[str, Any]) -> None:
        """Add one step.

        :param info: the info of ``env.step()``
        """
        episode = self._episode
        if episode is None:
            if not info.get("route_length_m"):
                return
            episode = self._episode = DrivingEpisode(float(info["route_length_m"]))
        counts = episode.infractions
        progress = float(info.get("route_progress_m", episode.progress_m))
        off_road = bool(info.get("off_driving_lane", False))
        if off_road:
            episode.off_road_m += max(progress - episode.progress_m, 0.0)
            if not self._off_road:
                counts["off_road"] = int(counts["off_road"] or 0) + 1
        self._off_road = off_road
        episode.progress_m = max(episode.progress_m, progress)
        for type_id in info.get("collision_types", ()):
            kind = collision_kind(type_id)
            counts[kind] = int(counts[kind] or 0) + 1
        counts["lane_invasion"] = int(counts["lane_invasion"] or 0) + int(info.get("lane_invasions", 0))
        reason = info.get("reason")
        if reason is not None:
            episode.end_reason = str(reason)
            episode.completed = reason == "route_completed"
            if reason in ENDING_EVENTS:
                kind = ENDING_EVENTS[reason]
                counts[kind] = int(counts[kind] or 0) + 1

    def finish(self) -> DrivingEpisode | None:
        """:return: the episode (None when the env reported no route), and forget it"""
        episode, self._episode = self._episode, None
        return episode


def tensorboard_values(summary: Mapping[str, Any]) -> dict[str, float]:
    """Logger keys of an :func:`aggregate_scores` result: ``eval/route_completion``, ``eval/infraction_penalty``,
    ``eval/driving_score`` and ``eval/infractions_per_km/<kind>`` (measured kinds only).

    :param summary: the aggregate
    :return: key -> value
    """
    values = {f"eval/{key}": float(summary[key]) for key in ("route_completion", "infraction_penalty", "driving_score")}
    for kind, rate in summary["infractions_per_km"].items():
        if rate is not None:
            values[f"eval/infractions_per_km/{kind}"] = float(rate)
    return values


def _cell(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return str(value) if isinstance(value, int) else f"{value:.{digits}g}"


def leaderboard_table(summary: Mapping[str, Any]) -> str:
    """An :func:`aggregate_scores` result as Markdown: scores per episode and overall, then infractions by kind.

    :param summary: the aggregate
    :return: two tables and a note on what differs from the leaderboard
    """
    lines = ["| episode | route completion % | infraction penalty | driving score | km driven | ended |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for i, s in enumerate(summary["episodes"]):
        cells = [str(i), f"{s['route_completion']:.1f}", f"{s['infraction_penalty']:.3f}", f"{s['driving_score']:.1f}",
                 f"{s['driven_km']:.3f}", str(s["end_reason"])]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        f"| **mean** | **{summary['route_completion']:.1f}** | **{summary['infraction_penalty']:.3f}** | "
        f"**{summary['driving_score']:.1f}** | {summary['driven_km']:.3f} (total) | |"
    )
    lines += ["", "| infraction | coefficient | count | per km |", "|---|---|---|---|"]
    for kind in INFRACTION_KINDS:
        coefficient = PENALTY_COEFFICIENTS.get(kind)
        shown = f"{coefficient:.2f}" if coefficient else ("1 - off-road %" if kind == "off_road" else "ends the route"
                                                         if kind in ENDING_EVENTS.values() else "-")  # fmt: skip
        count, rate = summary["infractions"][kind], summary["infractions_per_km"][kind]
        lines.append(f"| {kind} | {shown} | {_cell(count)} | {_cell(rate)} |")
    lines += [
        "",
        "Leaderboard 1.0 formula (https://leaderboard.carla.org/): driving score = route completion x infraction "
        "penalty, averaged over episodes. n/a: not measured (CarlaEnv does not detect red lights or stop signs, so the "
        "score is an upper bound where they occur). CarlaEnv ends an episode at the first collision, at "
        "max_lateral_deviation_m from the route (route deviation) and when stuck (agent blocked).",
    ]
    return "\n".join(lines)
