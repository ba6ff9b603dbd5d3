"""Exceptions raised by sb3_carla_td3, each naming what is wrong and what is accepted."""


class ConfigError(ValueError):
    """A configuration file or value is invalid (unknown key, wrong type, value out of range)."""


class GradientClipError(RuntimeError):
    """The global L2 norm of the gradients an optimizer is about to step exceeds its clip limit."""


class OptimizerCoverageError(RuntimeError):
    """A trainable parameter is missing from its optimizer, stepped twice, or stepped by an unknown optimizer."""


class NonFiniteGradientError(FloatingPointError):
    """A loss or gradient is NaN or infinite and ``nonfinite_grads="raise"`` was requested."""


class CarlaConnectionError(ConnectionError):
    """No CARLA server answers at the configured host and port."""


class ReplayMemoryError(MemoryError):
    """The replay buffer asked for would need more memory than the machine has (raised before allocating it)."""
