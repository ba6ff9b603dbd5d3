"""The embedded default driving env: gymnasium's CarRacing-v3 (box2d) with the CARLA env's interface.

Actions are ``[steer, throttle_brake]`` in ``[-1, 1]``; observations are channel-first uint8 frame stacks (newest frame
last, as SB3's ``VecFrameStack`` builds them), optionally with a vector of the car's physics under a Dict observation.
Episodes end early when the car stays off the track or stands still, so that episode length means something. The pedal
mapping and the stuck and off-track rules are those of :mod:`sb3_carla_td3.envs.wrappers` (the same functions), which
apply them to an env of your own, gymnasium's ``CarRacing-v3`` included.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.box2d import car_racing
from pygame import gfxdraw

from sb3_carla_td3.envs.carracing_config import PEDAL_MAPPINGS as PEDAL_MAPPINGS  # importable here as before
from sb3_carla_td3.envs.carracing_config import STATE_SIZE, CarRacingConfig
from sb3_carla_td3.envs.wrappers import StreakCounter, carracing_off_track, carracing_speed, pedal_control

__all__ = ["VECTOR_FIELDS", "CarRacingConfig", "CarRacingEnv", "vector_fields"]

# Names of the elements of the "vector" observation, in order (see CarRacingEnv's docstring for units and ranges).
VECTOR_FIELDS: tuple[str, ...] = (
    "forward_speed",
    "lateral_speed",
    "yaw_rate",
    "steer_angle",
    "on_track",
    "heading_error",
    "lateral_offset",
)
_VECTOR_LOW = np.array([-1.0, -1.0, -1.0, -1.0, 0.0, -1.0, -2.0], dtype=np.float32)
_VECTOR_HIGH = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0], dtype=np.float32)
WAYPOINT_BOUND = 2.0  # waypoints / lookahead_m are clipped to +-2 (a point within the lookahead lies within +-1 on track)
MAX_SPEED = 100.0  # m/s: Box2D moves a body at most 2 units per 1/50 s step; the car is 5 units long, so units ~ metres
MAX_YAW_RATE = 10.0  # rad/s: measured peak while spinning on grass at full throttle
MAX_STEER_ANGLE = 0.4  # rad: limit of CarRacing's front-wheel joints
ZOOM_FRAMES = car_racing.FPS  # CarRacing zooms the camera in over its first second (t < 1 s)
HUD_ROWS = 12  # bottom 12.5 % of the 96-px state image: speed/ABS/steering/gyro bars and the score
_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601 luma, as Pillow's convert("L")


def vector_fields(config: CarRacingConfig) -> tuple[str, ...]:
    """Names of the elements of the ``"vector"`` observation under ``config``, in order.

    :param config: the env options; ``n_waypoints`` adds ``waypoint_K_forward`` and ``waypoint_K_right`` for each
        centre-line point ahead, K from 1 (the nearest)
    :return: :data:`VECTOR_FIELDS` followed by the waypoint fields
    """
    waypoints = (f"waypoint_{k}_{axis}" for k in range(1, config.n_waypoints + 1) for axis in ("forward", "right"))
    return VECTOR_FIELDS + tuple(waypoints)


class _CarRacingCore(car_racing.CarRacing):
    """CarRacing that renders its state image only on request and culls off-screen polygons with numpy.

    ``CarRacing.step`` draws the whole scene every physics frame, and its polygon culling loops over ~800 polygons
    in Python. Here ``step`` skips the drawing (frames within an action repeat and the zoom-in are never seen),
    :meth:`state_pixels` draws the current frame, and the culling is vectorised; the pixels are identical.
    """

    _polygons: np.ndarray | None = None  # (n, 4, 2) world coordinates of the grass patches, then the road polygons

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray | None, dict]:
        self._polygons = None  # a new track: rebuild the polygon array on the next draw
        return super().reset(seed=seed, options=options)

    def _render(self, mode: str) -> Any:
        return None if mode == "state_pixels" else super()._render(mode)  # step() asks for "state_pixels"; skip

    def state_pixels(self) -> np.ndarray:
        """Draw the current frame.

        :return: uint8 array (96, 96, 3), CarRacing's ``state_pixels`` render
        """
        return super()._render("state_pixels")

    def _render_road(self, zoom: float, translation: tuple[float, float], angle: float) -> None:
        surface = self.surf
        if surface is None:  # CarRacing.render creates the surface before it draws the road
            raise RuntimeError("_render_road called outside CarRacing.render (no surface)")
        bounds = car_racing.PLAYFIELD
        field_poly = [(bounds, bounds), (bounds, -bounds), (-bounds, -bounds), (-bounds, bounds)]
        self._draw_colored_polygon(self.surf, field_poly, self.bg_color, zoom, translation, angle, clip=False)
        if self._polygons is None:
            g = car_racing.GRASS_DIM
            grass = [
                [(g * x + g, g * y), (g * x, g * y), (g * x, g * y + g), (g * x + g, g * y + g)]
                for x in range(-20, 20, 2)
                for y in range(-20, 20, 2)
            ]
            self._n_grass = len(grass)
            self._polygons = np.array(grass + [poly for poly, _ in self.road_poly], dtype=np.float64)
        # Same transform as CarRacing._draw_colored_polygon: rotate by `angle`, scale by `zoom`, then translate.
        cos, sin, xy = math.cos(angle), math.sin(angle), self._polygons
        x = (xy[..., 0] * cos - xy[..., 1] * sin) * zoom + translation[0]
        y = (xy[..., 0] * sin + xy[..., 1] * cos) * zoom + translation[1]
        m = car_racing.MAX_SHAPE_DIM
        visible = ((x >= -m) & (x <= car_racing.WINDOW_W + m) & (y >= -m) & (y <= car_racing.WINDOW_H + m)).any(axis=1)
        for i in np.flatnonzero(visible).tolist():
            # Road colours are read live: the contact listener recolours a tile when a wheel touches it.
            color = self.grass_color if i < self._n_grass else [int(c) for c in self.road_poly[i - self._n_grass][1]]
            poly = list(zip(x[i].tolist(), y[i].tolist(), strict=True))
            gfxdraw.aapolygon(surface, poly, color)
            gfxdraw.filled_polygon(surface, poly, color)


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """Box-filter resampling matrix: ``out = W @ x`` averages the input pixels each output pixel covers.

    :param n_in: input length in pixels, >= 1
    :param n_out: output length in pixels, >= 1
    :return: float32 array (n_out, n_in) whose rows sum to 1
    """
    edges = np.linspace(0.0, n_in, n_out + 1)
    lo = np.maximum(edges[:-1, None], np.arange(n_in)[None, :])
    hi = np.minimum(edges[1:, None], np.arange(1, n_in + 1)[None, :])
    weights = np.clip(hi - lo, 0.0, None)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


class CarRacingEnv(gym.Env):
    """Top-down car racing from pixels: gymnasium's CarRacing-v3 behind the CARLA env's interface.

    ## Description
    gymnasium's ``CarRacing`` (box2d, continuous; a random track every episode) with the library's driving interface:
    a 2-D action, a channel-first frame stack, an optional physics vector and early termination off the track. It is
    the default env of the validation phases when no CARLA server is available.

    ## Action Space
    ``Box(-1, 1, (2,), float32)``:

    - 0: steer, -1 full left, +1 full right (CarRacing's ``steer``);
    - 1: throttle_brake: with ``pedal="split"`` a value ``> 0`` is the gas pedal (0 to 1), a value ``< 0`` the brake
      pedal (``-value * max_brake``); with ``pedal="linear"`` [-1, 1] maps linearly onto [-max_brake, 1] first (gas
      above 0, brake below), so that 0, the centre of a tanh actor, is gas ``(1 - max_brake) / 2``. CarRacing's car
      does not slow down without the brake: zero gas only coasts.

    :meth:`step` raises ``ValueError`` for an action that is not a finite array of shape (2,), then clips it to the
    space. CarRacing raises the gas by at most 0.1 per physics frame; braking above 0.9 locks the wheels.

    ## Observation Space
    ``image``: uint8 ``Box(0, 255, (frames * C, S, S))`` with ``C = 1`` (grayscale, ITU-R 601 luma) or 3 (RGB) and
    ``S = image_size``: the last ``frames`` images, channel-first, oldest first and **newest last**. After ``reset``
    every slot is zero except the newest, exactly as SB3's ``VecFrameStack`` fills it. The source is CarRacing's
    96x96 state render; ``crop_hud`` (default) cuts its bottom 12 rows (speed, ABS, steering and gyro bars and the
    score, a running sum of the reward) and 6 columns per side, leaving the 84x84 px scene around the car, used as
    is at ``image_size=84`` and box-filtered to other sizes. With ``vector_obs`` the observation is a ``Dict`` with
    this array under ``"image"`` and a float32 ``"vector"`` of the car's physics now (not stacked), ``VECTOR_FIELDS``:

    - 0 ``forward_speed``: velocity along the car's heading / 100 m/s, -1 to 1 (Box2D caps speed at 100 units/s;
      a unit is about a metre, the car being 5 long);
    - 1 ``lateral_speed``: sideways (drift) velocity, positive to the car's right / 100 m/s, -1 to 1;
    - 2 ``yaw_rate``: angular velocity, positive turning right / 10 rad/s, clipped to -1 to 1;
    - 3 ``steer_angle``: front-wheel angle / 0.4 rad (the joint limit), positive right, -1 to 1;
    - 4 ``on_track``: fraction of the four wheels on a road tile, 0 to 1;
    - 5 ``heading_error``: angle from the car's heading to the direction of the nearest centre-line point, positive
      when the track turns right of the car / pi, -1 to 1;
    - 6 ``lateral_offset``: signed distance from that point, positive right of the driving direction, divided by
      the track half-width (6.67 units), clipped to -2 to 2 (beyond +-1 the car is off the road);
    - then, with ``n_waypoints`` > 0, for each of the next ``n_waypoints`` centre-line points, spaced
      ``lookahead_m / n_waypoints`` apart along the track from the car's projection onto it: ``waypoint_K_forward``
      and ``waypoint_K_right``, its position in the car's frame / ``lookahead_m``, clipped to -2 to 2 (the CARLA
      env's route vector; :func:`vector_fields` names them). Without them the vector shows where the car is on the
      track now but not the bend ahead.

    ## Rewards
    CarRacing's own reward, summed over the ``action_repeat`` physics frames of a step: +1000/N for every new one of
    the N track tiles and -0.1 per frame; leaving the playfield gives -100 for that frame. An off-track termination
    adds ``offtrack_penalty`` (default -100: never better than the -0.1 x 1000 = -100 a full episode of idling
    costs, so ending an episode early is not a shortcut). Tiles touched at the start, during the zoom-in, are paid
    at the first step, as CarRacing does.

    ## Starting State
    The car stands still on the first tile, on a new random track drawn from ``self.np_random``. With ``skip_zoom``
    (default) ``reset`` first runs CarRacing's 1-s camera zoom-in (50 physics frames with no control and no
    rendering, about 5 ms of CPU), so the first observation already has the final zoom.

    ## Episode End
    ``info["reason"]`` is ``None`` while the episode runs and names the first of these that applies at the end.
    Terminated: ``"lap_complete"`` (``lap_complete_percent`` of the tiles visited and back on the first tile),
    ``"out_of_playfield"`` (CarRacing's -100), ``"offtrack"`` (all four wheels off the road for ``offtrack_steps``
    consecutive steps). Truncated: ``"stuck"`` (speed under ``stuck_speed`` m/s for ``stuck_steps`` consecutive steps
    after the zoom-in), ``"max_steps"`` (``max_episode_steps`` steps). Every ``info`` also holds ``speed`` (m/s),
    ``tiles_visited`` and ``tiles_total``.

    ## Arguments
    :param config: the env options (see :class:`CarRacingConfig`); ``None`` uses the defaults
    :param render_mode: ``None``, ``"rgb_array"`` (600x400 RGB frames from :meth:`render`) or ``"human"`` (a window;
        needs a display)

    ## Version History
    - v0 (sb3_carla_td3 0.1.0): first version, on gymnasium's CarRacing-v3.
    """

    metadata: dict[str, Any] = {"render_modes": ["human", "rgb_array"], "render_fps": car_racing.FPS}  # noqa: RUF012

    def __init__(self, config: CarRacingConfig | None = None, render_mode: str | None = None) -> None:
        super().__init__()
        if config is None:
            config = CarRacingConfig()
        if not isinstance(config, CarRacingConfig):
            raise ValueError(f"{type(self).__name__} config must be a CarRacingConfig or None, got {config!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None, 'rgb_array' or 'human', got {render_mode!r}")
        self.config = config
        self.render_mode = render_mode
        self.frame_stack: int = config.frames
        self._channels = 1 if config.grayscale else 3
        self._core = _CarRacingCore(render_mode, False, config.lap_complete_percent, config.domain_randomize, True)
        source = STATE_SIZE - HUD_ROWS if config.crop_hud else STATE_SIZE
        self._resample = None if source == config.image_size else _area_weights(source, config.image_size)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        size = config.image_size
        image_space = spaces.Box(0, 255, shape=(config.frames * self._channels, size, size), dtype=np.uint8)
        waypoint_bound = np.full(2 * config.n_waypoints, WAYPOINT_BOUND, dtype=np.float32)
        low, high = np.concatenate([_VECTOR_LOW, -waypoint_bound]), np.concatenate([_VECTOR_HIGH, waypoint_bound])
        vector_space = spaces.Box(low, high, dtype=np.float32)
        if not config.image_obs:
            self.observation_space = vector_space
            self.frame_stack = 1  # no image, nothing stacked (the replay buffer must not look for frames)
        elif config.vector_obs:
            self.observation_space = spaces.Dict({"image": image_space, "vector": vector_space})
        else:
            self.observation_space = image_space
        self._stack = np.zeros(image_space.shape, dtype=np.uint8)
        self._steps = 0
        # The same streak rules as the OffTrackTermination and StuckTermination wrappers (sb3_carla_td3.envs.wrappers).
        self._offtrack = StreakCounter(config.offtrack_steps)
        self._stuck = StreakCounter(config.stuck_steps)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray | dict[str, np.ndarray], dict[str, Any]]:
        """Draw a new track, place the car on it and return the first observation.

        :param seed: seed for ``self.np_random``, the only source of randomness (track shape, randomized colours);
            ``None`` continues the current random stream
        :param options: passed to CarRacing; ``{"randomize": False}`` keeps the colours with ``domain_randomize``
        :return: the observation (frame stack zero except the newest frame) and the ``info`` dict
        """
        super().reset(seed=seed)
        self._core.np_random = self.np_random  # one random stream: the track comes from this env's seed
        self._core.reset(options=options)
        if self.config.skip_zoom:
            for _ in range(ZOOM_FRAMES - 1):  # CarRacing.reset already ran the first frame
                self._core.step(None)  # type: ignore[arg-type]  # CarRacing.step(None) runs a frame without action; typed without None
        track = np.array(self._core.track, dtype=np.float64)  # rows (alpha, beta, x, y), in driving order
        self._track_xy, self._track_beta = track[:, 2:4], track[:, 1]
        self._track_loop = np.vstack([self._track_xy, self._track_xy[:1]])  # the track is a closed loop
        segments = np.linalg.norm(np.diff(self._track_loop, axis=0), axis=1)
        self._track_s = np.concatenate([[0.0], np.cumsum(segments)])  # arc length of each point of the loop
        self._steps = 0
        self._offtrack.reset()
        self._stuck.reset()
        self._stack[:] = 0
        if self.config.image_obs:
            self._stack[-self._channels :] = self._frame()
        return self._observation(), self._info(None)

    def step(self, action: np.ndarray) -> tuple[np.ndarray | dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Apply ``[steer, throttle_brake]`` for ``action_repeat`` physics frames.

        :param action: finite array of shape (2,); values outside [-1, 1] are clipped
        :return: observation, reward, terminated, truncated, info (see the class docstring)
        """
        try:
            values = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError):
            values = None
        if values is None or values.shape != (2,) or not np.all(np.isfinite(values)):
            raise ValueError(f"action must be a finite array of shape (2,) in {self.action_space}, got {action!r}")
        steer, pedal = np.clip(values, -1.0, 1.0).tolist()
        # CarRacing's [steer, gas, brake]; a softer brake lets random exploration move the car (zero gas only coasts).
        control = np.array(pedal_control(steer, pedal, self.config.max_brake, self.config.pedal))
        reward, terminated, inner_info = 0.0, False, {}
        for _ in range(self.config.action_repeat):
            _, frame_reward, terminated, _, inner_info = self._core.step(control)
            reward += float(frame_reward)
            if terminated:
                break
        self._steps += 1
        self._offtrack.update(carracing_off_track(self._core))
        zoomed_in = self._core.t >= 1.0 - 1e-6  # the camera zoom-in lasts CarRacing's first second
        self._stuck.update(zoomed_in and self._speed() < self.config.stuck_speed)
        reason = self._end_reason(terminated, bool(inner_info.get("lap_finished")))
        if reason == "offtrack":
            reward += self.config.offtrack_penalty
        elif reason == "stuck":
            reward += self.config.stuck_penalty
        if self.config.image_obs:
            self._stack[: -self._channels] = self._stack[self._channels :]
            self._stack[-self._channels :] = self._frame()
        # A penalised stop is the agent's doing: a termination. Unpenalised, "stuck" only truncates (bootstrapped).
        terminal = ("lap_complete", "out_of_playfield", "offtrack") + (("stuck",) if self.config.stuck_penalty else ())
        terminated = reason in terminal
        truncated = reason is not None and not terminated
        return self._observation(), reward, terminated, truncated, self._info(reason)

    def _end_reason(self, carracing_terminated: bool, lap_finished: bool) -> str | None:
        """Name why the episode ends after this step, the first that applies in the order of the class docstring.

        :param carracing_terminated: CarRacing ended the episode (lap finished or out of the playfield)
        :param lap_finished: CarRacing's ``info["lap_finished"]``
        :return: a terminal reason (``"lap_complete"``, ``"out_of_playfield"``, ``"offtrack"``), a truncation reason
            (``"stuck"``, ``"max_steps"``), or ``None`` while the episode goes on
        """
        if carracing_terminated:
            return "lap_complete" if lap_finished else "out_of_playfield"
        if self._offtrack.reached:
            return "offtrack"
        if self._stuck.reached:
            return "stuck"
        return "max_steps" if self._steps >= self.config.max_episode_steps else None

    def render(self) -> np.ndarray | None:
        """Render the scene with the ``render_mode`` given at construction.

        :return: a uint8 (400, 600, 3) RGB array for ``"rgb_array"``; ``None`` for ``"human"`` or no render mode
        """
        if self.render_mode is None:
            gym.logger.warn(f"{type(self).__name__}.render() needs a render_mode, e.g. CarRacingEnv(render_mode='rgb_array')")
            return None
        return self._core.render()

    def close(self) -> None:
        """Close the render window, if any."""
        self._core.close()

    def _frame(self) -> np.ndarray:
        """Draw, crop, convert and resample the current frame.

        :return: uint8 array (C, image_size, image_size)
        """
        pixels = self._core.state_pixels()
        if self.config.crop_hud:
            side = HUD_ROWS // 2
            pixels = pixels[: STATE_SIZE - HUD_ROWS, side : STATE_SIZE - side]
        if not self.config.grayscale and self._resample is None:
            return np.ascontiguousarray(pixels.transpose(2, 0, 1))
        image = pixels.astype(np.float32)
        image = (image @ _GRAY)[None] if self.config.grayscale else image.transpose(2, 0, 1)
        if self._resample is not None:
            image = self._resample @ image @ self._resample.T
        return np.clip(np.rint(image), 0, 255).astype(np.uint8)

    @property
    def _car(self) -> Any:
        """:return: the Box2D car (gymnasium's ``Car``); raises before the first reset, when there is none"""
        car = self._core.car
        if car is None:
            raise RuntimeError("CarRacingEnv has no car before reset(): call reset() first")
        return car

    @property
    def _offtrack_count(self) -> int:
        """:return: consecutive steps so far with all four wheels off the road"""
        return self._offtrack.count

    def _speed(self) -> float:
        """:return: the car's speed in m/s (Box2D units per second)"""
        return carracing_speed(self._core)

    def _vector(self) -> np.ndarray:
        """:return: float32 array of the fields :func:`vector_fields` names (see the class docstring)"""
        car = self._car
        hull = car.hull
        forward, right = np.array(hull.GetWorldVector((0.0, 1.0))), np.array(hull.GetWorldVector((1.0, 0.0)))
        velocity = np.array(hull.linearVelocity)
        position = np.array(hull.position)
        nearest = int(np.argmin(np.sum((self._track_xy - position) ** 2, axis=1)))
        beta = self._track_beta[nearest]  # the track runs along (-sin beta, cos beta) there; (cos beta, sin beta) is right
        heading_error = math.remainder(hull.angle - beta, 2.0 * math.pi)
        offset = float(np.dot(position - self._track_xy[nearest], (math.cos(beta), math.sin(beta))))
        on_track = sum(bool(wheel.tiles) for wheel in car.wheels) / len(car.wheels)
        # Box2D angles and angular velocities are counter-clockwise; the vector's signs are positive to the right.
        vector: tuple[float, ...] = (np.dot(velocity, forward) / MAX_SPEED, np.dot(velocity, right) / MAX_SPEED)
        vector += (-hull.angularVelocity / MAX_YAW_RATE, -car.wheels[0].joint.angle / MAX_STEER_ANGLE, on_track)
        vector += (heading_error / math.pi, offset / car_racing.TRACK_WIDTH)
        physics = np.clip(np.array(vector, dtype=np.float32), _VECTOR_LOW, _VECTOR_HIGH)
        if not self.config.n_waypoints:
            return physics
        along = float(np.dot(position - self._track_xy[nearest], (-math.sin(beta), math.cos(beta))))
        waypoints = self._waypoints_ahead(self._track_s[nearest] + along) - position
        local = np.stack([waypoints @ forward, waypoints @ right], axis=1) / self.config.lookahead_m
        return np.concatenate([physics, np.clip(local.ravel(), -WAYPOINT_BOUND, WAYPOINT_BOUND).astype(np.float32)])

    def _waypoints_ahead(self, s: float) -> np.ndarray:
        """Centre-line points ahead of arc length ``s``, spaced ``lookahead_m / n_waypoints`` apart, around the loop.

        :param s: arc length along the track from its first point (the car's projection onto the centre line)
        :return: array of shape ``(n_waypoints, 2)``, world coordinates
        """
        n, length = self.config.n_waypoints, self._track_s[-1]
        targets = (s + self.config.lookahead_m * np.arange(1, n + 1) / n) % length
        loop = self._track_loop
        return np.stack([np.interp(targets, self._track_s, loop[:, 0]), np.interp(targets, self._track_s, loop[:, 1])], 1)

    def _observation(self) -> np.ndarray | dict[str, np.ndarray]:
        """:return: a copy of the frame stack, with the physics vector in a Dict when ``vector_obs``"""
        if not self.config.image_obs:
            return self._vector()
        if self.config.vector_obs:
            return {"image": self._stack.copy(), "vector": self._vector()}
        return self._stack.copy()

    def _info(self, reason: str | None) -> dict[str, Any]:
        """Build the ``info`` dict.

        :param reason: why the episode ended, ``None`` while it goes on
        :return: ``reason``, ``speed`` (m/s), ``tiles_visited`` and ``tiles_total``
        """
        visited, total = self._core.tile_visited_count, len(self._core.track)
        return {"reason": reason, "speed": self._speed(), "tiles_visited": visited, "tiles_total": total}
