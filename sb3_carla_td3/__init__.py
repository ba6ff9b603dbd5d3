"""sb3_carla_td3: TD3 from camera images for Stable-Baselines3, with verified clipping and health monitoring."""

from sb3_carla_td3 import _aliases  # noqa: F401  # old import paths of moved modules (sb3_carla_td3/_aliases.py)
from sb3_carla_td3.config import RunConfig, load_config
from sb3_carla_td3.errors import (
    CarlaConnectionError,
    ConfigError,
    GradientClipError,
    NonFiniteGradientError,
    OptimizerCoverageError,
)
from sb3_carla_td3.extractors import CnnGruExtractor
from sb3_carla_td3.policies import CnnPolicy, MultiInputPolicy
from sb3_carla_td3.reports import hyperparameter_report, parameter_report
from sb3_carla_td3.td3_cnn import TD3CNN
from sb3_carla_td3.version import __version__

__all__ = [
    "TD3CNN",
    "CarlaConnectionError",
    "CnnGruExtractor",
    "CnnPolicy",
    "ConfigError",
    "GradientClipError",
    "MultiInputPolicy",
    "NonFiniteGradientError",
    "OptimizerCoverageError",
    "RunConfig",
    "__version__",
    "hyperparameter_report",
    "load_config",
    "parameter_report",
]
