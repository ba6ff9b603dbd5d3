"""Image encoders for TD3 from frame-stacked camera observations: a per-frame CNN followed by a small GRU.

The default encoder (``cnn="pooled"``, ``rnn="gru"``, ``rnn_hidden=48``) follows the seed's action plan (Tasks 6-7):
a NatureCNN variant with stride-1 convolutions and 2x2 max pooling, applied to every stacked frame, and a GRU that
reads the frame features from the oldest to the newest frame. ``cnn="nature"`` and ``rnn=None`` give the cheaper
DQN NatureCNN and the plain stacked-channel CNN that SB3's ``CnnPolicy`` uses, for comparison.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

__all__ = ["CNN_LAYOUTS", "ENCODER_PRESETS", "CnnGruExtractor", "ConvEncoder", "count_parameters", "min_image_size"]

# (out_channels, kernel, stride, max-pool 2x2 after the activation) per conv layer.
CNN_LAYOUTS: dict[str, tuple[tuple[int, int, int, bool], ...]] = {
    # Seed Task 6 (after the "Race Driving" paper): stride 1 everywhere, 2x2 max pooling, LeakyReLU(0.01).
    "pooled": ((32, 8, 1, True), (64, 4, 1, True), (64, 3, 1, True)),
    # Mnih et al. 2015, "Human-level control through deep reinforcement learning" (SB3's NatureCNN), ReLU.
    "nature": ((32, 8, 4, False), (64, 4, 2, False), (64, 3, 1, False)),
}
RNN_TYPES = ("gru", "lstm")
#: Named :class:`CnnGruExtractor` settings, chosen by ``CnnPolicy(encoder_preset=...)`` (``policy_kwargs``); explicit
#: ``features_extractor_kwargs`` override single entries. Costs: gradient steps/s of TD3CNN in shared mode on 2 CPU
#: cores, batch 96 (docs/benchmarks.md).
ENCODER_PRESETS: dict[str, dict[str, object]] = {
    # The recipe of docs/results.md: the DQN NatureCNN on the stacked frames, DrQ-v2's 50-feature
    # Linear -> LayerNorm -> tanh trunk and centred pixels (CnnPolicy leaves them uncentred beside a vector, as the
    # camera + vector recipe). Every learning result of the library uses it.
    "nature": {"cnn": "nature", "rnn": None, "cnn_features": 512, "trunk": 50, "center_pixels": True},
    # The design card's encoder (seed Tasks 6-7): the stride-1, max-pooled CNN on every frame, then a GRU-48 over the
    # frames; about 60x the arithmetic of "nature" (hours per thousand CPU gradient steps at 84 px): meant for a GPU.
    "pooled_gru": {"cnn": "pooled", "rnn": "gru", "cnn_features": 512, "rnn_hidden": 48, "trunk": 50, "center_pixels": True},
}


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Count the scalar parameters of a module.

    :param module: any torch module
    :param trainable_only: count only parameters with ``requires_grad=True``
    :return: the number of scalar parameters (elements, not tensors)
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _conv_output_size(size: int, cnn: str) -> int:
    """Spatial size (one side) after the conv stack ``cnn``; 0 when a layer would get an input smaller than its kernel."""
    for _, kernel, stride, pool in CNN_LAYOUTS[cnn]:
        if size < kernel:
            return 0
        size = (size - kernel) // stride + 1
        if pool:
            size //= 2
    return size


def min_image_size(cnn: str) -> int:
    """Smallest image height (and width) that the conv stack ``cnn`` accepts.

    :param cnn: conv layout, ``"pooled"`` or ``"nature"``
    :return: the minimum side in pixels (29 for ``"pooled"``, 36 for ``"nature"``)
    """
    if cnn not in CNN_LAYOUTS:
        raise ValueError(f"cnn must be one of {sorted(CNN_LAYOUTS)}, got {cnn!r}")
    return next(n for n in range(1, 4096) if _conv_output_size(n, cnn) >= 1)


class ConvEncoder(nn.Module):
    """A conv stack, a flatten layer and a linear layer with activation: one image to a feature vector.

    :param cnn: conv layout, ``"pooled"`` (LeakyReLU(0.01) activations) or ``"nature"`` (ReLU activations)
    :param in_channels: channels of the input image (one frame, or all stacked frames), >= 1
    :param height: input height in pixels, >= ``min_image_size(cnn)``
    :param width: input width in pixels, >= ``min_image_size(cnn)``
    :param features: output features, >= 1
    :param center_pixels: subtract 0.5 from the images before the first conv, so that pixels scaled to [0, 1] are
        centred at 0 (DrQ-v2's ``obs / 255 - 0.5``)
    """

    def __init__(
        self, cnn: str, in_channels: int, height: int, width: int, features: int, center_pixels: bool = False
    ) -> None:
        super().__init__()
        self.center_pixels = center_pixels
        # The stride-1 pooled layout runs 2.1x faster on a CPU in NHWC memory layout (benchmarks/pooled_encoder.py,
        # same function); "nature" keeps NCHW, so that the recipe's runs keep their exact floating-point numbers.
        self.channels_last = cnn == "pooled"
        layers: list[nn.Module] = []
        channels = in_channels
        for out_channels, kernel, stride, pool in CNN_LAYOUTS[cnn]:
            layers.append(nn.Conv2d(channels, out_channels, kernel_size=kernel, stride=stride))
            # 2x2 max pooling commutes with the monotone activation: pooling first activates a quarter of the values.
            layers += [nn.MaxPool2d(kernel_size=2, stride=2), self._activation(cnn)] if pool else [self._activation(cnn)]
            channels = out_channels
        layers.append(nn.Flatten())
        self.convs = nn.Sequential(*layers)
        if self.channels_last:  # the weights too: an NHWC input alone is no faster
            self.convs.to(memory_format=th.channels_last)  # type: ignore[call-overload]
        # Size the linear layer with one dummy pass instead of hard-coding 64 * 7 * 7.
        with th.no_grad():
            self.n_flatten = int(self.convs(th.zeros(1, in_channels, height, width)).shape[1])
        self.linear = nn.Sequential(nn.Linear(self.n_flatten, features), self._activation(cnn))

    @staticmethod
    def _activation(cnn: str) -> nn.Module:
        return nn.LeakyReLU(negative_slope=0.01) if cnn == "pooled" else nn.ReLU()

    def forward(self, images: th.Tensor) -> th.Tensor:
        """(batch, in_channels, H, W) -> (batch, features)

        :param images: float images, already scaled (SB3 divides uint8 images by 255 before the extractor)
        :return: the features
        """
        images = images - 0.5 if self.center_pixels else images
        if self.channels_last:
            images = images.contiguous(memory_format=th.channels_last)
        return self.linear(self.convs(images))


def _check_arguments(
    frames: int, cnn: str, cnn_features: int, rnn: str | None, rnn_hidden: int, vector_mlp: list[int] | None
) -> None:
    """Raise ValueError for a constructor argument outside its accepted range."""
    if not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames must be a positive int (the number of stacked frames), got {frames!r}")
    if cnn not in CNN_LAYOUTS:
        raise ValueError(f"cnn must be one of {sorted(CNN_LAYOUTS)}, got {cnn!r}")
    if not isinstance(cnn_features, int) or cnn_features < 1:
        raise ValueError(f"cnn_features must be a positive int, got {cnn_features!r}")
    if rnn is not None and rnn not in RNN_TYPES:
        raise ValueError(f"rnn must be one of {list(RNN_TYPES)} or None, got {rnn!r}")
    if not isinstance(rnn_hidden, int) or rnn_hidden < 1:
        raise ValueError(f"rnn_hidden must be a positive int, got {rnn_hidden!r}")
    if vector_mlp is not None and not all(isinstance(n, int) and n >= 1 for n in vector_mlp):
        raise ValueError(f"vector_mlp must be a list of positive ints (hidden sizes) or None, got {vector_mlp!r}")


def _split_space(observation_space: spaces.Space, image_key: str) -> tuple[spaces.Space, dict[str, spaces.Box]]:
    """Return the image space and the vector spaces (sorted by key) of a Box or Dict observation space."""
    if isinstance(observation_space, spaces.Box):
        return observation_space, {}
    if not isinstance(observation_space, spaces.Dict):
        raise ValueError(
            f"CnnGruExtractor needs a Box image space (CnnPolicy) or a Dict space with an image key (MultiInputPolicy), "
            f"got {observation_space}"
        )
    if image_key not in observation_space.spaces:
        raise ValueError(
            f"The Dict observation space has no image key {image_key!r}; its keys are {sorted(observation_space.spaces)}. "
            "Pass image_key=<the key of the camera image>."
        )
    vectors: dict[str, spaces.Box] = {}
    for key in sorted(k for k in observation_space.spaces if k != image_key):
        space = observation_space.spaces[key]
        if not isinstance(space, spaces.Box) or len(space.shape) != 1:
            raise ValueError(
                f"Dict key {key!r} must be a 1-D Box vector (every key other than the image key {image_key!r} is "
                f"concatenated after the image features), got {space}"
            )
        vectors[key] = space
    return observation_space.spaces[image_key], vectors


def _encoder_input_shape(space: spaces.Space, frames: int, cnn: str, normalized_image: bool) -> tuple[int, int, int]:
    """Raise ValueError, one check per property, unless ``space`` is a channel-first stack of ``frames`` images.

    :return: the image's (channels, height, width)
    """
    if not isinstance(space, spaces.Box):
        raise ValueError(f"The image space must be a Box of shape (frames * channels, height, width), got {space}")
    shape = space.shape
    if len(shape) != 3:
        raise ValueError(
            f"The image space must have 3 dimensions (frames * channels, height, width), got shape {shape}; "
            "for vector observations use MlpPolicy, for image + vector use a Dict space and MultiInputPolicy"
        )
    if not normalized_image and space.dtype != np.uint8:
        raise ValueError(
            f"The image space must have dtype uint8 (SB3 then divides by 255), got {space.dtype} for shape {shape}; "
            "pass normalized_image=True (and policy_kwargs normalize_images=False) for already-scaled float images"
        )
    if not normalized_image and (np.any(space.low != 0) or np.any(space.high != 255)):
        raise ValueError(
            f"The uint8 image space must have bounds [0, 255] (SB3 only divides such spaces by 255), got "
            f"low={np.min(space.low)}, high={np.max(space.high)} for shape {shape}; "
            "pass normalized_image=True if the images are already scaled"
        )
    channels, height, width = shape
    if width < channels and width < height:
        raise ValueError(
            f"The image space looks channel-last (height, width, channels), shape {shape}; expected channel-first "
            f"(frames * channels, height, width), e.g. ({width}, {channels}, {height}). Wrap the env with VecTransposeImage"
        )
    if channels % frames != 0:
        raise ValueError(
            f"The image space has {channels} channels (shape {shape}), which is not divisible by frames={frames}; "
            "expected frames * channels_per_frame channels (e.g. 4 grayscale frames: 4, 4 RGB frames: 12)"
        )
    minimum = min_image_size(cnn)
    if height < minimum or width < minimum:
        raise ValueError(
            f"The image space is {height}x{width} pixels (shape {shape}), too small for cnn={cnn!r}: "
            f"height and width must be >= {minimum}"
        )
    return channels, height, width


class CnnGruExtractor(BaseFeaturesExtractor):
    """Per-frame CNN + GRU features extractor for frame-stacked images, optionally with vector observations.

    The image observation is ``frames`` frames of ``C`` channels stacked along the channel axis, oldest first (the
    newest frame is the last ``C`` channels, as SB3's ``VecFrameStack`` produces). With ``rnn="gru"`` or ``"lstm"``
    every frame goes through the same CNN (``self.cnn``), and the recurrent layer (``self.rnn``) reads the frame
    features from the oldest to the newest frame; the features are its final hidden state. The recurrence spans only
    the frames inside one observation, so the extractor is stateless and works with SB3's replay buffers. With
    ``rnn=None``, one CNN reads all stacked channels at once (SB3's ``NatureCNN`` behaviour). The zero-filled frames
    ``VecFrameStack`` puts at an episode start are ordinary inputs.

    For a Dict observation space (``MultiInputPolicy``), the key ``image_key`` goes through the encoder above; every
    other key must be a 1-D Box vector, and the vectors are concatenated after the image features in sorted key order,
    optionally through an MLP.

    SB3's policies divide uint8 image observations by 255 before the extractor (``normalize_images=True``). Unlike
    ``NatureCNN``, this class does not get ``normalized_image=True`` added when ``normalize_images=False``: pass it in
    ``features_extractor_kwargs``.

    :param observation_space: a Box image space of shape (frames * C, H, W), or a Dict space holding one under
        ``image_key`` and 1-D Box vectors under the other keys
    :param frames: number of stacked frames in the image (>= 1); the channel count must be a multiple of it
    :param cnn: conv layout: ``"pooled"`` (conv 8x8/1, 4x4/1, 3x3/1 with 32, 64, 64 channels, each followed by
        LeakyReLU(0.01) and 2x2 max pooling; images >= 29x29) or ``"nature"`` (DQN NatureCNN: 8x8/4, 4x4/2, 3x3/1,
        ReLU; images >= 36x36); both end in a linear layer with the same activation
    :param cnn_features: output size of the CNN's linear layer (>= 1); the image features when ``rnn=None``
    :param rnn: ``"gru"``, ``"lstm"`` (the seed's previous encoder, which used 256 hidden units) or ``None`` (one CNN
        over the stacked channels, no recurrence)
    :param rnn_hidden: hidden units of the GRU or LSTM (>= 1); the image features when ``rnn`` is set
    :param image_key: key of the image in a Dict observation space; ignored for a Box space
    :param vector_mlp: hidden sizes (each >= 1) of a ReLU MLP applied to the concatenated vector keys; ``None``
        concatenates them as they are. Needs a Dict space with at least one vector key
    :param normalized_image: the images are already scaled floats: skip the uint8 dtype and [0, 255] bounds checks
        (mirrors ``NatureCNN``'s flag)
    :param trunk: size of DrQ-v2's bounded feature trunk, Linear -> LayerNorm -> tanh, applied to the image features
        (so they live in [-1, 1] on the scale of the vector keys); ``None`` (default): no trunk
    :param center_pixels: feed the CNN ``image - 0.5`` (pixels in [0, 1] centred at 0, as DrQ-v2 does). With
        uncentred inputs every weight step of Adam moves a first-layer pre-activation the same way on every pixel;
        measured on CarRacing from pixels at lr 1e-3, only 1-3 of the 32 first-layer channels were still positive
        anywhere after 5K steps
    """

    def __init__(
        self,
        observation_space: spaces.Box | spaces.Dict,
        frames: int = 4,
        cnn: str = "pooled",
        cnn_features: int = 512,
        rnn: str | None = "gru",
        rnn_hidden: int = 48,
        image_key: str = "image",
        vector_mlp: list[int] | None = None,
        normalized_image: bool = False,
        trunk: int | None = None,
        center_pixels: bool = False,
    ) -> None:
        _check_arguments(frames, cnn, cnn_features, rnn, rnn_hidden, vector_mlp)
        if not isinstance(center_pixels, bool):
            raise ValueError(f"center_pixels must be True or False, got {center_pixels!r}")
        if trunk is not None and (isinstance(trunk, bool) or not isinstance(trunk, int) or trunk < 1):
            raise ValueError(f"trunk must be a positive int (the trunk's features) or None, got {trunk!r}")
        image_space, vector_spaces = _split_space(observation_space, image_key)
        channels, height, width = _encoder_input_shape(image_space, frames, cnn, normalized_image)
        if vector_mlp is not None and not vector_spaces:
            raise ValueError(
                f"vector_mlp={vector_mlp!r} needs a Dict observation space with vector keys besides {image_key!r}, "
                f"got {observation_space}; pass vector_mlp=None"
            )
        encoder_features = cnn_features if rnn is None else rnn_hidden
        image_features = encoder_features if trunk is None else trunk
        vector_dim = sum(int(space.shape[0]) for space in vector_spaces.values())
        vector_features = vector_mlp[-1] if vector_mlp else vector_dim
        super().__init__(observation_space, image_features + vector_features)

        self.frames = frames
        self.channels_per_frame = channels // frames
        self.cnn_type = cnn
        self.rnn_type = rnn
        self.image_key = image_key if isinstance(observation_space, spaces.Dict) else None
        self.vector_keys = tuple(vector_spaces)
        self.image_features_dim = image_features
        self.vector_dim = vector_dim

        # The per-frame CNN (or, with rnn=None, the CNN over all stacked channels), shared by every frame.
        cnn_channels = channels if rnn is None else self.channels_per_frame
        self.cnn = ConvEncoder(cnn, cnn_channels, height, width, cnn_features, center_pixels=center_pixels)
        self.rnn: nn.GRU | nn.LSTM | None = None
        if rnn is not None:
            rnn_class = nn.GRU if rnn == "gru" else nn.LSTM
            self.rnn = rnn_class(input_size=cnn_features, hidden_size=rnn_hidden, batch_first=True)
        self.trunk: nn.Sequential | None = None
        if trunk is not None:
            self.trunk = nn.Sequential(nn.Linear(encoder_features, trunk), nn.LayerNorm(trunk), nn.Tanh())
        self.vector_net: nn.Sequential | None = None
        if vector_mlp:
            sizes = [vector_dim, *vector_mlp]
            layers: list[nn.Module] = []
            for n_in, n_out in pairwise(sizes):
                layers += [nn.Linear(n_in, n_out), nn.ReLU()]
            self.vector_net = nn.Sequential(*layers)

    def encode_image(self, images: th.Tensor) -> th.Tensor:
        """(batch, frames * C, H, W) -> (batch, image_features_dim)

        :param images: frame-stacked images, oldest frame first, already scaled to floats
        :return: the final GRU/LSTM hidden state, or the CNN features when ``rnn=None``
        """
        images = images.float()
        if self.rnn is None:
            return self._project(self.cnn(images))
        return self._project(self._recur(self._frame_features(images)))

    def _project(self, features: th.Tensor) -> th.Tensor:
        """(batch, cnn_features or rnn_hidden) -> (batch, image_features_dim): the trunk, when there is one."""
        return features if self.trunk is None else self.trunk(features)

    def _frame_features(self, images: th.Tensor) -> th.Tensor:
        """(batch, frames * C, H, W) -> (batch, frames, cnn_features), one CNN call for every frame."""
        batch, _, height, width = images.shape
        # (batch, frames * C, H, W) -> (batch * frames, C, H, W): frame t is channels [t * C, (t + 1) * C).
        per_frame = images.float().reshape(batch * self.frames, self.channels_per_frame, height, width)
        return self.cnn(per_frame).reshape(batch, self.frames, -1)

    def _recur(self, sequence: th.Tensor) -> th.Tensor:
        """(batch, frames, cnn_features) -> (batch, rnn_hidden): the RNN's final hidden state."""
        if self.rnn is None:
            raise RuntimeError("_recur needs an RNN; with rnn=None the CNN reads the stacked frames at once")
        _, hidden = self.rnn(sequence)
        if isinstance(hidden, tuple):  # LSTM returns (h_n, c_n)
            hidden = hidden[0]
        return hidden[-1]  # (num_layers=1, batch, rnn_hidden) -> (batch, rnn_hidden)

    def encode_image_pair(self, images: th.Tensor, next_images: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """Encode obs images (with gradient) and next-obs images (without), CNN-ing shared frames once.

        In a frame stack, next_obs's frames 0..F-2 are obs's frames 1..F-1. With a per-frame CNN (``rnn`` set) only
        next_obs's newest frame then needs the CNN: 5 frame encodings instead of 8 for 4 frames. When the images
        are not such a shifted pair (checked exactly), or ``rnn=None``, both are encoded in full.

        :param images: (batch, frames * C, H, W) observations, scaled to floats
        :param next_images: the next observations, same shape
        :return: obs features (with gradient) and next-obs features (detached), each (batch, image_features_dim)
        """
        c = self.channels_per_frame
        if self.rnn is None or self.frames < 2 or not th.equal(next_images[:, :-c], images[:, c:]):
            with th.no_grad():
                next_features = self.encode_image(next_images)
            return self.encode_image(images), next_features
        frames = self._frame_features(images)
        with th.no_grad():
            newest = self.cnn(next_images[:, -c:].float())  # (batch, cnn_features)
            next_features = self._project(self._recur(th.cat([frames[:, 1:].detach(), newest[:, None]], dim=1)))
        return self._project(self._recur(frames)), next_features

    def forward(self, observations: th.Tensor | dict[str, th.Tensor]) -> th.Tensor:
        """(batch, frames * C, H, W) -> (batch, features_dim); Dict: image as above, vectors (batch, D_k) appended.

        :param observations: the preprocessed observation batch (a tensor, or a dict of tensors for a Dict space)
        :return: image features, followed by the vector features in sorted key order
        """
        images, vectors = self._split(observations)
        features = self.encode_image(images)
        if vectors is None:
            return features
        return th.cat([features, vectors if self.vector_net is None else self.vector_net(vectors)], dim=1)

    def _split(self, observations: th.Tensor | dict[str, th.Tensor]) -> tuple[th.Tensor, th.Tensor | None]:
        """:return: the images and the vector keys' values flattened and concatenated (None without vector keys)"""
        if isinstance(observations, th.Tensor):
            return observations, None
        images = observations[self.image_key or "image"]
        if not self.vector_keys:
            return images, None
        return images, th.cat([th.flatten(observations[key], start_dim=1).float() for key in self.vector_keys], dim=1)

    def forward_pair(
        self, observations: th.Tensor | dict[str, th.Tensor], next_observations: th.Tensor | dict[str, th.Tensor]
    ) -> tuple[th.Tensor, th.Tensor]:
        """:meth:`forward` of obs (with gradient) and next obs (detached), sharing frames (:meth:`encode_image_pair`).

        :param observations: the preprocessed observation batch
        :param next_observations: the preprocessed next-observation batch
        :return: (obs features, next-obs features), each (batch, features_dim)
        """
        (images, vectors), (next_images, next_vectors) = self._split(observations), self._split(next_observations)
        image, next_image = self.encode_image_pair(images, next_images)
        if vectors is None or next_vectors is None:
            return image, next_image
        if self.vector_net is not None:
            vectors = self.vector_net(vectors)
            with th.no_grad():
                next_vectors = self.vector_net(next_vectors)
        return th.cat([image, vectors], dim=1), th.cat([next_image, next_vectors], dim=1)

    def parameter_counts(self) -> dict[str, int]:
        """Split the parameter count by submodule.

        :return: ``{"cnn": ..., "rnn": ..., "vector": ..., "total": ...}``; the first three add up to the total
        """
        counts = {
            "cnn": count_parameters(self.cnn),
            "rnn": 0 if self.rnn is None else count_parameters(self.rnn),
            "vector": 0 if self.vector_net is None else count_parameters(self.vector_net),
        }
        counts["total"] = count_parameters(self)
        return counts
