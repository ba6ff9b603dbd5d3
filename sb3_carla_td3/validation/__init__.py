"""The seed plan's validation phases, training runs, reports and plots."""

from sb3_carla_td3.validation.phases import ARCHITECTURES, finish_report, phase1, phase2, phase3
from sb3_carla_td3.validation.report import PhaseReport, Row
from sb3_carla_td3.validation.runner import CallbackFactory, RunResult, build_model, make_vec_env, summarize, train

__all__ = [
    "ARCHITECTURES",
    "CallbackFactory",
    "PhaseReport",
    "Row",
    "RunResult",
    "build_model",
    "finish_report",
    "make_vec_env",
    "phase1",
    "phase2",
    "phase3",
    "summarize",
    "train",
]
