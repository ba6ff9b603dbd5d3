"""Typed configuration of :class:`~sb3_carla_td3.envs.carla.env.CarlaEnv` (the YAML ``env:`` section).

Every field has a default and a one-line ``help`` (with its unit) in its metadata. ``__post_init__`` checks
types and ranges and raises :class:`~sb3_carla_td3.errors.ConfigError` naming the field, quoting the value and
giving the accepted range. This module does not import ``carla``.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, ClassVar

from sb3_carla_td3.envs.penalties import check_penalty
from sb3_carla_td3.errors import ConfigError

#: Hosts a server started by ``server_command`` (on this machine) is reached on.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
#: Ports a CARLA server occupies from its RPC port N: N (RPC), N + 1 (streaming) and N + 2 (secondary servers,
#: ``SecondaryPort = Value + 2`` in CARLA's settings). Servers on one host must start at least this far apart.
SERVER_PORT_SPAN = 3


def server_ports(port: int) -> tuple[int, ...]:
    """The ports a CARLA server started with ``-carla-rpc-port=port`` uses.

    :param port: its RPC port.
    :return: ``(port, port + 1, port + 2)``: RPC, streaming and secondary-server ports.
    """
    return tuple(port + k for k in range(SERVER_PORT_SPAN))


#: Number of NPC vehicles of each traffic scenario (the original study's scenarios 0, 1 and 2).
SCENARIO_NPC_VEHICLES: dict[int, int] = {0: 20, 1: 50, 2: 100}


#: Fields of :class:`RewardConfig` that scale a shaping term, each >= 0.
WEIGHTS = ("efficiency_weight", "lane_keeping_weight", "comfort_weight", "safety_weight", "progress_weight")
#: Fields of :class:`RewardConfig` added to the reward at an episode's end, each <= 0.
PENALTIES = ("collision_penalty", "off_road_penalty", "stuck_penalty")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _check_float(name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ConfigError(f"{name} must be a finite number in {bracket}{low}, {high}], got {value!r}")
    return float(value)


def _check_str(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _check_xy(name: str, value: Any) -> list[float] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ConfigError(f"{name} must be None or a pair [x, y] of finite numbers in metres, got {value!r}")
    return [_check_float(f"{name}[{i}]", v, -1e6, 1e6) for i, v in enumerate(value)]


def _from_dict(cls: type, data: Any, path: str) -> Any:
    """Build dataclass ``cls`` from ``data``, recursing into nested dataclass fields and rejecting unknown keys."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__} must be a mapping of field names to values, got {data!r}")
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown key {where!r} in {cls.__name__}{hint} Valid keys: {', '.join(sorted(known))}")
        factory = known[key].default_factory
        nested = factory() if callable(factory) else None
        kwargs[key] = _from_dict(type(nested), value, where) if is_dataclass(nested) else value
    return cls(**kwargs)


@dataclass
class CameraConfig:
    """The RGB camera on the ego vehicle (``sensor.camera.rgb``)."""

    _prefix: ClassVar[str] = "camera"

    width: int = field(default=160, metadata=_help("camera image width in pixels, 16 to 4096"))
    height: int = field(default=120, metadata=_help("camera image height in pixels, 16 to 4096"))
    fov_deg: float = field(default=90.0, metadata=_help("horizontal field of view in degrees, (0, 180)"))
    mount_x_m: float = field(default=1.6, metadata=_help("camera position ahead of the vehicle centre in metres, -10 to 10"))
    mount_z_m: float = field(default=1.5, metadata=_help("camera height above the vehicle origin in metres, 0 to 10"))
    pitch_deg: float = field(default=-8.0, metadata=_help("camera pitch in degrees (negative looks down), -90 to 90"))

    def __post_init__(self) -> None:
        p = self._prefix
        self.width = _check_int(f"{p}.width", self.width, 16, 4096)
        self.height = _check_int(f"{p}.height", self.height, 16, 4096)
        self.fov_deg = _check_float(f"{p}.fov_deg", self.fov_deg, 0.0, 179.0, low_open=True)
        self.mount_x_m = _check_float(f"{p}.mount_x_m", self.mount_x_m, -10.0, 10.0)
        self.mount_z_m = _check_float(f"{p}.mount_z_m", self.mount_z_m, 0.0, 10.0)
        self.pitch_deg = _check_float(f"{p}.pitch_deg", self.pitch_deg, -90.0, 90.0)


@dataclass
class RouteConfig:
    """Where the ego drives: a fixed start/end pair, a waypoint file, or (neither) a random route per episode."""

    _prefix: ClassVar[str] = "route"

    start_xy: list[float] | None = field(
        default=None, metadata=_help("route start [x, y] in metres (CARLA world frame); None picks a random spawn point")
    )
    end_xy: list[float] | None = field(
        default=None, metadata=_help("route end [x, y] in metres (CARLA world frame); None picks a random spawn point")
    )
    waypoint_file: str | None = field(
        default=None, metadata=_help("CSV of 'x, y, target speed' rows (m, m, m/s); when set it overrides start/end")
    )
    resolution_m: float = field(default=2.0, metadata=_help("spacing of the planned route polyline in metres, (0.1, 20]"))
    n_waypoints: int = field(default=10, metadata=_help("route points ahead in the observation vector, 1 to 100"))
    lookahead_m: float = field(default=50.0, metadata=_help("arc length covered by those points in metres, (0, 500]"))
    min_length_m: float = field(default=100.0, metadata=_help("shortest random route accepted in metres, 0 to 100000"))
    max_attempts: int = field(default=20, metadata=_help("random start/end pairs tried per reset before giving up, 1 to 1000"))

    def __post_init__(self) -> None:
        p = self._prefix
        self.start_xy = _check_xy(f"{p}.start_xy", self.start_xy)
        self.end_xy = _check_xy(f"{p}.end_xy", self.end_xy)
        if (self.start_xy is None) != (self.end_xy is None):
            raise ConfigError(
                f"{p}.start_xy and {p}.end_xy must be given together (or both None for random routes), "
                f"got start_xy={self.start_xy!r}, end_xy={self.end_xy!r}"
            )
        if self.waypoint_file is not None:
            self.waypoint_file = _check_str(f"{p}.waypoint_file", self.waypoint_file)
        self.resolution_m = _check_float(f"{p}.resolution_m", self.resolution_m, 0.1, 20.0, low_open=True)
        self.n_waypoints = _check_int(f"{p}.n_waypoints", self.n_waypoints, 1, 100)
        self.lookahead_m = _check_float(f"{p}.lookahead_m", self.lookahead_m, 0.0, 500.0, low_open=True)
        self.min_length_m = _check_float(f"{p}.min_length_m", self.min_length_m, 0.0, 100000.0)
        self.max_attempts = _check_int(f"{p}.max_attempts", self.max_attempts, 1, 1000)


@dataclass
class RewardConfig:
    """Weights and penalties of the reward terms in :mod:`sb3_carla_td3.envs.carla.rewards` (nothing is hard-coded there).

    A weight (``*_weight``) is >= 0 and scales a term whose sign its help states; a penalty (``*_penalty``) is <= 0
    and is added to the reward as it is (:mod:`sb3_carla_td3.envs.penalties`, the convention of both envs).
    """

    _prefix: ClassVar[str] = "reward"

    efficiency_weight: float = field(
        default=1.0, metadata=_help("weight >= 0 of the efficiency term (speed along the route vs target, in [-1, 1])")
    )
    lane_keeping_weight: float = field(
        default=0.5, metadata=_help("weight >= 0 of the lane-keeping term (lateral and heading error, in [-1, 0]: a cost)")
    )
    comfort_weight: float = field(
        default=0.2, metadata=_help("weight >= 0 of the comfort term (action change, in [-1, 0]: a cost)")
    )
    safety_weight: float = field(
        default=1.0, metadata=_help("weight >= 0 of the safety term (lane invasion, wrong way, in [-2, 0]: a cost)")
    )
    progress_weight: float = field(
        default=0.5, metadata=_help("weight >= 0: reward per metre of arc length gained along the route (lost backwards)")
    )
    collision_penalty: float = field(
        default=-10.0, metadata=_help("penalty <= 0 added to the reward on a collision (terminal)")
    )
    off_road_penalty: float = field(
        default=-10.0, metadata=_help("penalty <= 0 added to the reward on leaving the route (terminal)")
    )
    stuck_penalty: float = field(
        default=0.0, metadata=_help("penalty <= 0 added to the reward on a stuck ending; non-zero makes 'stuck' a termination")
    )
    target_speed_mps: float = field(default=8.0, metadata=_help("cruise speed for the efficiency term in m/s, (0, 50]"))
    heading_tolerance_rad: float = field(default=0.5, metadata=_help("heading error of full lane penalty in rad, (0, 3.15]"))

    def __post_init__(self) -> None:
        p = self._prefix
        for name in WEIGHTS:
            setattr(self, name, _check_float(f"{p}.{name}", getattr(self, name), 0.0, 1e6))
        for name in PENALTIES:
            # The sign first: a value written for the old convention (a positive cost) gets a message saying so.
            value = check_penalty(f"{p}.{name}", getattr(self, name))
            setattr(self, name, _check_float(f"{p}.{name}", value, -1e6, 0.0))
        self.target_speed_mps = _check_float(f"{p}.target_speed_mps", self.target_speed_mps, 0.0, 50.0, low_open=True)
        self.heading_tolerance_rad = _check_float(
            f"{p}.heading_tolerance_rad", self.heading_tolerance_rad, 0.0, 3.15, low_open=True
        )


@dataclass
class CarlaConfig:
    """Everything :class:`~sb3_carla_td3.envs.carla.env.CarlaEnv` reads; build it directly, with
    :meth:`from_dict`, or from the YAML ``env:`` section."""

    host: str = field(default="localhost", metadata=_help("CARLA server host name or IP"))
    port: int = field(default=2000, metadata=_help("CARLA RPC port (the server also uses port + 1 and port + 2), 1 to 65533"))
    tm_port: int = field(default=8000, metadata=_help("Traffic Manager port, unique per client on a machine, 1 to 65535"))
    timeout_s: float = field(default=10.0, metadata=_help("RPC, tick and sensor timeout in seconds, (0, 600]"))
    town: str = field(default="Town01", metadata=_help("map to load if the server has another one, e.g. Town01"))
    fixed_delta_seconds: float = field(default=0.05, metadata=_help("simulated seconds per tick (sync mode), (0, 0.1]"))
    camera: CameraConfig = field(default_factory=CameraConfig, metadata=_help("RGB camera size, FOV and mount"))
    image_size: int = field(default=84, metadata=_help("side of the square observation image in pixels, 16 to 512"))
    grayscale: bool = field(default=True, metadata=_help("observe 1 grey channel per frame (else 3 RGB channels)"))
    frames: int = field(default=4, metadata=_help("frames stacked in the image observation, 1 to 16"))
    scenario: int = field(default=0, metadata=_help("traffic scenario 0/1/2 = 20/50/100 NPC vehicles"))
    npc_vehicles: int | None = field(default=None, metadata=_help("NPC vehicle count overriding the scenario, 0 to 500"))
    npc_exclusion_radius_m: float = field(default=15.0, metadata=_help("no NPC spawns this close to the ego in metres, >= 0"))
    ego_blueprint: str = field(default="vehicle.tesla.model3", metadata=_help("blueprint id of the ego vehicle"))
    route: RouteConfig = field(default_factory=RouteConfig, metadata=_help("route source and observation lookahead"))
    max_episode_steps: int = field(default=1000, metadata=_help("steps before truncation ('max_steps'), 1 to 10000000"))
    stuck_seconds: float = field(default=10.0, metadata=_help("simulated seconds below stuck_speed_mps before truncation"))
    stuck_speed_mps: float = field(default=0.5, metadata=_help("speed under which the car counts as stuck in m/s, 0 to 10"))
    max_brake: float = field(default=1.0, metadata=_help("brake at throttle_brake -1, (0, 1]; softer lets exploration move"))
    max_lateral_deviation_m: float = field(default=3.0, metadata=_help("distance from the route that terminates in metres"))
    route_end_tolerance_m: float = field(default=2.0, metadata=_help("remaining arc length that counts as completed, metres"))
    settle_ticks: int = field(default=10, metadata=_help("ticks after spawning before the first observation, 1 to 1000"))
    settle_max_dropped_frames: int = field(
        default=2,
        metadata=_help(
            "camera frames that may be missing or skipped during a reset's settle ticks (each waits up to timeout_s) "
            "before the reset fails, 0 to 100"
        ),
    )
    reconnect_attempts: int = field(
        default=5, metadata=_help("tries per reset to reach a lost server before CarlaConnectionError, 1 to 1000")
    )
    reconnect_delay_s: float = field(
        default=1.0, metadata=_help("wait after the first failed reset try in seconds, doubling each try, 0 to 600")
    )
    reconnect_max_delay_s: float = field(
        default=30.0, metadata=_help("longest wait between reset tries in seconds, >= reconnect_delay_s, up to 3600")
    )
    server_command: str | None = field(
        default=None,
        metadata=_help(
            "command that starts a CARLA server, with {port} for the RPC port (e.g. 'CarlaUE4.sh -RenderOffScreen "
            "-carla-rpc-port={port}'); the env starts it, restarts it after a crash and stops it on close; "
            "None connects to a running server"
        ),
    )
    server_start_timeout_s: float = field(
        default=120.0, metadata=_help("longest wait for a started server's port in seconds, (0, 3600]")
    )
    server_log_dir: str = field(
        default="carla_server_logs", metadata=_help("folder of the started server's log, carla_server_<port>.log")
    )
    reward: RewardConfig = field(default_factory=RewardConfig, metadata=_help("reward weights and penalties"))
    seed: int | None = field(default=0, metadata=_help("seed of the first reset and the Traffic Manager; None = random"))

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (types and ranges); called by ``__post_init__`` and again by the env.

        :raises ConfigError: naming the first invalid field, its value and the accepted range.
        """
        self.host = _check_str("host", self.host)
        self.port = _check_int("port", self.port, 1, 65535 - SERVER_PORT_SPAN + 1)
        self.tm_port = _check_int("tm_port", self.tm_port, 1, 65535)
        if self.tm_port in server_ports(self.port):
            used = ", ".join(map(str, server_ports(self.port)))
            raise ConfigError(
                f"tm_port must differ from the server's ports {used} (RPC port, streaming port + 1, secondary "
                f"port + 2), got tm_port={self.tm_port}, port={self.port}"
            )
        self.timeout_s = _check_float("timeout_s", self.timeout_s, 0.0, 600.0, low_open=True)
        self.town = _check_str("town", self.town)
        self.fixed_delta_seconds = _check_float("fixed_delta_seconds", self.fixed_delta_seconds, 0.0, 0.1, low_open=True)
        for name, cls in (("camera", CameraConfig), ("route", RouteConfig), ("reward", RewardConfig)):
            value = getattr(self, name)
            if not isinstance(value, cls):
                raise ConfigError(f"{name} must be a {cls.__name__} (or a mapping in from_dict), got {value!r}")
        self.image_size = _check_int("image_size", self.image_size, 16, 512)
        if not isinstance(self.grayscale, bool):
            raise ConfigError(f"grayscale must be true or false, got {self.grayscale!r}")
        self.frames = _check_int("frames", self.frames, 1, 16)
        if isinstance(self.scenario, bool) or self.scenario not in SCENARIO_NPC_VEHICLES:
            raise ConfigError(f"scenario must be one of {sorted(SCENARIO_NPC_VEHICLES)}, got {self.scenario!r}")
        if self.npc_vehicles is not None:
            self.npc_vehicles = _check_int("npc_vehicles", self.npc_vehicles, 0, 500)
        self.npc_exclusion_radius_m = _check_float("npc_exclusion_radius_m", self.npc_exclusion_radius_m, 0.0, 1000.0)
        self.ego_blueprint = _check_str("ego_blueprint", self.ego_blueprint)
        self.max_episode_steps = _check_int("max_episode_steps", self.max_episode_steps, 1, 10_000_000)
        self.stuck_seconds = _check_float("stuck_seconds", self.stuck_seconds, 0.0, 3600.0, low_open=True)
        self.stuck_speed_mps = _check_float("stuck_speed_mps", self.stuck_speed_mps, 0.0, 10.0)
        self.max_brake = _check_float("max_brake", self.max_brake, 0.0, 1.0, low_open=True)
        self.max_lateral_deviation_m = _check_float(
            "max_lateral_deviation_m", self.max_lateral_deviation_m, 0.0, 50.0, low_open=True
        )
        self.route_end_tolerance_m = _check_float(
            "route_end_tolerance_m", self.route_end_tolerance_m, 0.0, 100.0, low_open=True
        )
        self.settle_ticks = _check_int("settle_ticks", self.settle_ticks, 1, 1000)
        self.settle_max_dropped_frames = _check_int("settle_max_dropped_frames", self.settle_max_dropped_frames, 0, 100)
        self.reconnect_attempts = _check_int("reconnect_attempts", self.reconnect_attempts, 1, 1000)
        self.reconnect_delay_s = _check_float("reconnect_delay_s", self.reconnect_delay_s, 0.0, 600.0)
        self.reconnect_max_delay_s = _check_float("reconnect_max_delay_s", self.reconnect_max_delay_s, 0.0, 3600.0)
        if self.reconnect_max_delay_s < self.reconnect_delay_s:
            raise ConfigError(
                f"reconnect_max_delay_s must be >= reconnect_delay_s, got reconnect_max_delay_s="
                f"{self.reconnect_max_delay_s!r}, reconnect_delay_s={self.reconnect_delay_s!r}"
            )
        if self.server_command is not None:
            self.server_command = _check_str("server_command", self.server_command)
            if "{port}" not in self.server_command:
                raise ConfigError(
                    f"server_command must contain '{{port}}' where the RPC port goes, got {self.server_command!r}"
                )
            if self.host not in LOOPBACK_HOSTS:
                raise ConfigError(
                    f"server_command starts a server on this machine, so host must be one of {list(LOOPBACK_HOSTS)}, "
                    f"got host={self.host!r}"
                )
        self.server_start_timeout_s = _check_float(
            "server_start_timeout_s", self.server_start_timeout_s, 0.0, 3600.0, low_open=True
        )
        self.server_log_dir = _check_str("server_log_dir", self.server_log_dir)
        if self.seed is not None:
            self.seed = _check_int("seed", self.seed, 0, 2**32 - 1)

    @property
    def n_npc_vehicles(self) -> int:
        """NPC vehicles spawned per episode: ``npc_vehicles`` if set, else the scenario's count."""
        return self.npc_vehicles if self.npc_vehicles is not None else SCENARIO_NPC_VEHICLES[self.scenario]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CarlaConfig:
        """Build a config from a plain mapping (nested mappings for ``camera``, ``route`` and ``reward``).

        A ``name: carla`` entry (the YAML ``env:`` section's selector) is accepted and dropped.

        :param data: field names to values; missing fields keep their defaults.
        :return: the validated config.
        :raises ConfigError: on an unknown key (naming the closest valid key), a wrong type or a value out of range.
        """
        if isinstance(data, dict) and "name" in data:
            if data["name"] != "carla":
                raise ConfigError(f"name must be 'carla' for a CarlaConfig, got {data['name']!r}")
            data = {k: v for k, v in data.items() if k != "name"}
        return _from_dict(cls, data, "")

    def to_dict(self) -> dict[str, Any]:
        """Return the config as nested plain dicts (what :meth:`from_dict` accepts and YAML can store).

        :return: field names to values.
        """
        return asdict(self)
