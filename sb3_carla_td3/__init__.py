"""sb3_carla_td3: TD3 from camera images for Stable-Baselines3, with verified clipping and health monitoring."""

from sb3_carla_td3.errors import (
    CarlaConnectionError,
    ConfigError,
    GradientClipError,
    NonFiniteGradientError,
    OptimizerCoverageError,
)
from sb3_carla_td3.version import __version__

__all__ = [
    "CarlaConnectionError",
    "ConfigError",
    "GradientClipError",
    "NonFiniteGradientError",
    "OptimizerCoverageError",
    "__version__",
]
