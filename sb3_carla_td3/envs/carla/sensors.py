"""Sensor data of the CARLA env: frame-matched queues, image preprocessing and the frame stack.

libcarla calls sensor callbacks on its own threads. Each callback copies what it needs into plain Python /
numpy values (never a carla object) and pushes ``(frame, payload)`` into a queue. After ``world.tick()``
returns frame ``F``, :meth:`SensorSuite.collect` waits (with a timeout) for the camera image of frame ``F``,
drops older images, and takes the collision and lane-invasion events up to ``F``. An image is therefore never
stale and never used twice. This module does not import ``carla``: callbacks are duck-typed, so tests can feed
fake images and events.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

#: ITU-R BT.601 luma weights for R, G, B.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])


class SensorTimeoutError(TimeoutError):
    """A sensor did not deliver the data of the frame returned by ``world.tick()`` within the timeout."""


class SensorFrameError(RuntimeError):
    """A sensor delivered a frame newer than the one waited for: the tick and sensor streams are out of step."""


class FrameQueue:
    """Queue of one streaming sensor (one item per tick), read by frame id.

    :param name: sensor name used in error messages.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: queue.Queue[tuple[int, Any]] = queue.Queue()
        self.dropped = 0  # stale items discarded so far

    def put(self, frame: int, payload: Any) -> None:
        """Add the data of one frame (called from the sensor thread).

        :param frame: simulator frame id of the data.
        :param payload: the data (plain values only).
        """
        self._queue.put((int(frame), payload))

    def get(self, frame: int, timeout_s: float) -> Any:
        """Return the data of ``frame``, discarding older items.

        :param frame: frame id returned by ``world.tick()``.
        :param timeout_s: longest wait in seconds, > 0.
        :return: the payload of that frame.
        :raises SensorTimeoutError: if it does not arrive within ``timeout_s``.
        :raises SensorFrameError: if a newer frame arrives first (the wanted one was skipped).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                item_frame, payload = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                raise SensorTimeoutError(f"{self.name} sent no data for frame {frame} within {timeout_s:.2f} s") from None
            if item_frame == frame:
                return payload
            if item_frame > frame:
                raise SensorFrameError(f"{self.name} delivered frame {item_frame} while frame {frame} was expected")
            self.dropped += 1

    def clear(self) -> None:
        """Discard everything queued."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return


class EventQueue:
    """Queue of an event sensor (zero or more items per tick), drained by frame id.

    :param name: sensor name used in error messages.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._items: list[tuple[int, Any]] = []
        self._lock = threading.Lock()

    def put(self, frame: int, payload: Any) -> None:
        """Add one event (called from the sensor thread).

        :param frame: simulator frame id of the event.
        :param payload: the event (plain values only).
        """
        with self._lock:
            self._items.append((int(frame), payload))

    def drain(self, frame: int) -> list[Any]:
        """Remove and return the events of frames up to and including ``frame``; later ones stay queued.

        :param frame: frame id returned by ``world.tick()``.
        :return: payloads in arrival order.
        """
        with self._lock:
            taken = [payload for f, payload in self._items if f <= frame]
            self._items = [(f, payload) for f, payload in self._items if f > frame]
        return taken

    def clear(self) -> None:
        """Discard everything queued."""
        with self._lock:
            self._items = []


def decode_bgra(raw_data: Any, width: int, height: int) -> np.ndarray:
    """Copy a CARLA camera buffer (BGRA bytes, row-major) into an RGB array.

    :param raw_data: buffer of ``height * width * 4`` bytes (``carla.Image.raw_data`` or bytes).
    :param width: image width in pixels.
    :param height: image height in pixels.
    :return: uint8 array of shape (height, width, 3), RGB.
    """
    flat = np.frombuffer(raw_data, dtype=np.uint8)
    if flat.size != height * width * 4:
        raise ValueError(f"camera buffer has {flat.size} bytes, expected {height}x{width}x4 = {height * width * 4}")
    return flat.reshape(height, width, 4)[:, :, 2::-1].copy()


def _resize_axis(image: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Area-average ``image`` along ``axis`` to ``size`` samples, using a cumulative sum (no BLAS call, so it
    stays fast when many processes share the CPU)."""
    n = image.shape[axis]
    edges = np.linspace(0.0, n, size + 1)  # output pixel borders, in input pixels
    moved = np.moveaxis(image, axis, 0)
    cumulative = np.concatenate([np.zeros((1, *moved.shape[1:])), np.cumsum(moved, axis=0)])
    pixel = np.minimum(edges.astype(int), n - 1)  # input pixel each border falls in
    fraction = (edges - pixel).reshape(-1, *([1] * (moved.ndim - 1)))
    integral = cumulative[pixel] + fraction * moved[pixel]  # sum of the input up to each border
    return np.moveaxis((integral[1:] - integral[:-1]) * (size / n), 0, axis)


def resize_area(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize by area averaging (like OpenCV's ``INTER_AREA`` when shrinking).

    Each output pixel is the mean of the input area it covers, fractional pixels weighted by their overlap.

    :param image: array of shape (H, W) or (H, W, C), any numeric dtype.
    :param height: output height in pixels, >= 1.
    :param width: output width in pixels, >= 1.
    :return: float64 array of shape (height, width) or (height, width, C).
    """
    return _resize_axis(_resize_axis(image.astype(np.float64), height, 0), width, 1)


def preprocess_image(rgb: np.ndarray, size: int, grayscale: bool) -> np.ndarray:
    """Turn one RGB camera image into observation channels.

    :param rgb: uint8 array (H, W, 3).
    :param size: output side in pixels.
    :param grayscale: True gives 1 luma channel, False 3 RGB channels.
    :return: uint8 array (1, size, size) or (3, size, size), channels first.
    """
    image = rgb @ LUMA_WEIGHTS if grayscale else rgb
    resized = resize_area(image, size, size)
    resized = resized[None] if grayscale else resized.transpose(2, 0, 1)
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


class FrameStack:
    """The last ``frames`` preprocessed images, oldest first and newest last.

    After :meth:`reset` every slot is zero except the newest, which is the convention of SB3's
    ``VecFrameStack`` (and what the replay buffers rely on).

    :param frames: number of stacked frames, >= 1.
    :param channels: channels per frame (1 grey, 3 RGB).
    :param size: image side in pixels.
    """

    def __init__(self, frames: int, channels: int, size: int) -> None:
        self.frames, self.channels = frames, channels
        self._stack = np.zeros((frames * channels, size, size), dtype=np.uint8)

    def reset(self, image: np.ndarray) -> np.ndarray:
        """Zero every slot and put ``image`` in the newest.

        :param image: uint8 array (channels, size, size).
        :return: a copy of the stack, shape (frames * channels, size, size).
        """
        self._stack[:] = 0
        self._stack[-self.channels :] = image
        return self._stack.copy()

    def push(self, image: np.ndarray) -> np.ndarray:
        """Drop the oldest frame and append ``image`` as the newest.

        :param image: uint8 array (channels, size, size).
        :return: a copy of the stack, shape (frames * channels, size, size).
        """
        self._stack[: -self.channels] = self._stack[self.channels :].copy()
        self._stack[-self.channels :] = image
        return self._stack.copy()


def repeat_newest_frame(observation: Any, frames: int, image_key: str = "image") -> Any:
    """The observation one step later when no new camera frame came: the stack shifted by one frame, its newest frame
    repeated, every other key unchanged.

    A truncated episode's last ``next_obs`` (the server died mid-step, a worker was restarted) is built this way, so
    that it continues the frame stack like every other transition (frame-stack replay buffers check this).

    :param observation: a Dict observation with a channel-first ``(frames * C, H, W)`` image, or that image alone
    :param frames: frames in the stack, >= 1 (1: returned as a copy)
    :param image_key: the Dict key of the image
    :return: a new observation
    """
    if isinstance(observation, dict):
        return {k: repeat_newest_frame(v, frames) if k == image_key else np.array(v) for k, v in observation.items()}
    image = np.array(observation)
    channels = image.shape[0] // frames
    if frames > 1:
        image[:-channels] = image[channels:].copy()
    return image


@dataclass(frozen=True)
class CollisionRecord:
    """One collision event as plain values.

    :param other_type_id: blueprint id of the other actor ("" if unknown, e.g. a static mesh).
    :param impulse: norm of the normal impulse in N*s.
    """

    other_type_id: str
    impulse: float


@dataclass(frozen=True)
class SensorReadings:
    """What the sensors reported for one tick.

    :param frame: the tick's frame id.
    :param rgb: camera image, uint8 (H, W, 3).
    :param collisions: collision events of this tick.
    :param lane_invasions: for each lane-invasion event, the types of the crossed markings.
    """

    frame: int
    rgb: np.ndarray
    collisions: list[CollisionRecord]
    lane_invasions: list[tuple[str, ...]]


class SensorSuite:
    """Queues and ``listen`` callbacks of the ego's camera, collision and lane-invasion sensors."""

    def __init__(self) -> None:
        self.camera = FrameQueue("camera")
        self.collisions = EventQueue("collision sensor")
        self.lane_invasions = EventQueue("lane-invasion sensor")

    def on_image(self, image: Any) -> None:
        """``listen`` callback of ``sensor.camera.rgb``: copy the BGRA buffer as RGB.

        :param image: a ``carla.Image`` (``frame``, ``width``, ``height``, ``raw_data``).
        """
        self.camera.put(image.frame, decode_bgra(image.raw_data, image.width, image.height))

    def on_collision(self, event: Any) -> None:
        """``listen`` callback of ``sensor.other.collision``.

        :param event: a ``carla.CollisionEvent`` (``frame``, ``other_actor``, ``normal_impulse``).
        """
        other = event.other_actor
        type_id = str(other.type_id) if other is not None else ""
        self.collisions.put(event.frame, CollisionRecord(type_id, float(event.normal_impulse.length())))

    def on_lane_invasion(self, event: Any) -> None:
        """``listen`` callback of ``sensor.other.lane_invasion``.

        :param event: a ``carla.LaneInvasionEvent`` (``frame``, ``crossed_lane_markings``).
        """
        self.lane_invasions.put(event.frame, tuple(str(m.type) for m in event.crossed_lane_markings))

    def collect(self, frame: int, timeout_s: float) -> SensorReadings:
        """Everything the sensors reported for ``frame``.

        :param frame: frame id returned by ``world.tick()``.
        :param timeout_s: longest wait for the camera image in seconds.
        :return: the readings of that frame.
        :raises SensorTimeoutError: if the camera image of ``frame`` does not arrive in time.
        :raises SensorFrameError: if the camera skipped ``frame``.
        """
        rgb = self.camera.get(frame, timeout_s)
        return SensorReadings(frame, rgb, self.collisions.drain(frame), self.lane_invasions.drain(frame))

    def clear(self) -> None:
        """Discard everything queued (between episodes)."""
        self.camera.clear()
        self.collisions.clear()
        self.lane_invasions.clear()
