"""The end-to-end demo: tiny teacher, rollouts, distilled students and the paper-style table."""

from .pipeline import METHODS, DemoConfig, run_demo
from .tasks import TASKS

__all__ = ["METHODS", "TASKS", "DemoConfig", "run_demo"]
