"""Helpers the health checks share: the house-style argument checks and the episodes that just ended."""

from __future__ import annotations

import math

from stable_baselines3.common.callbacks import BaseCallback


def require(ok: bool, name: str, value: object, accepted: str) -> None:
    """Raise the house-style ``ValueError`` for a constructor argument unless ``ok``.

    :param ok: whether ``value`` is acceptable
    :param name: the argument's name
    :param value: the value given
    :param accepted: what is accepted, e.g. ``"a float in (0, 1)"``
    """
    if not ok:
        raise ValueError(f"{name} must be {accepted}, got {value!r}")


def is_number(value: object, low: float = -math.inf, allow_none: bool = False) -> bool:
    """Whether ``value`` is a finite real number (not a bool) strictly above ``low``, or None when allowed.

    :param value: the value to test
    :param low: exclusive lower bound
    :param allow_none: accept None
    :return: the answer
    """
    if value is None:
        return allow_none
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > low


def is_count(value: object) -> bool:
    """Whether ``value`` is an int >= 1 (not a bool).

    :param value: the value to test
    :return: the answer
    """
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def episode_infos(callback: BaseCallback) -> list[dict[str, float]]:
    """The Monitor ``info["episode"]`` dicts ({r, l, t}) of the episodes that ended at the callback's current step.

    :param callback: a callback inside ``learn()``, whose ``locals`` hold the step's ``infos``
    :return: one dict per finished episode (empty when none ended or the env has no Monitor)
    """
    return [info["episode"] for info in callback.locals.get("infos", ()) if "episode" in info]
