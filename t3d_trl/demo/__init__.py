"""The end-to-end demo: tiny teacher, rollouts, distilled students and the paper-style table."""

from .pipeline import METHODS, DemoConfig, check_demo_config, run_demo
from .tasks import TASKS

__all__ = ["METHODS", "TASKS", "DemoConfig", "check_demo_config", "run_demo"]
