"""The study behind docs/results.md: the demo's pipeline over three seeds, more tasks, the paper's recipe and the
remedies tried for T3D ≈ Naive TD, with students reused between runs and the accuracy plots.

It runs :func:`t3d_trl.demo.run_demo` (teacher, rollouts, students, evaluation, the paper-style table) with the study's
settings, keeps every student it trains in ``<output_dir>/seed<k>/students/<name>.json`` so that a run with the same
settings reuses it (seeds can run in separate processes, a last run over all of them writes the table, a new student
trains alone), and draws ``accuracy_vs_tokens_per_step.png`` (matplotlib: ``pip install t3d-trl[plots]``).

```bash
python examples/study.py                                   # the whole study (about 20 minutes of work per seed)
python examples/study.py --seeds 1 --output_dir t3d-study  # one seed in its own process
python examples/study.py --student_steps 100 --print_config
```

It is an example, not part of the package: it needs a clone of the repository. Every flag of ``t3d-trl demo`` (each
:class:`~t3d_trl.demo.DemoConfig` field) works here, with the study's values as defaults.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

#: the study's settings where they differ from the demo's: four tasks (perm5 needs a teacher trained 5,000 steps),
#: three seeds, and the students of STUDY_VARIANTS besides the demo's five
STUDY_SETTINGS: dict[str, Any] = {
    "output_dir": "t3d-study",
    "tasks": ("words", "wordplay", "walk", "perm5"),
    "teacher_steps": 5000,
    "seeds": (0, 1, 2),
}

#: further students of the study: the paper's recipe against the library's defaults, and the remedies tested for
#: T3D ≈ Naive TD: fake tokens sampled instead of the argmax (which mostly equals the teacher's token); a reference
#: that is never refreshed, and a larger β, so that DDO's margins leave the sigmoid's linear region; uniformly drawn
#: mask ratios; T3D mixed with TD
STUDY_VARIANTS: dict[str, dict[str, Any]] = {
    # the official trainer's state distribution (t3d_trl/configs/sdar_t3d_paper.yaml); the demo's prompts end on a
    # block boundary, so "response" alignment is the absolute grid here
    "T3D (paper recipe)": {
        "loss_type": ["ddo", "path"],
        "random_token_ratio": 0.1,
        "state_order": "earliest",
        "block_alignment": "response",
    },
    "T3D (fake T=1)": {"loss_type": ["ddo", "path"], "reference_temperature": 1.0},
    "T3D (fixed reference)": {"loss_type": ["ddo", "path"], "sync_ref_model": False},
    "T3D (β=1)": {"loss_type": ["ddo", "path"], "beta": 1.0},
    "Naive TD (uniform r)": {"loss_type": ["td"], "mask_ratio_power": 0.0},
    "T3D (uniform r)": {"loss_type": ["ddo", "path"], "mask_ratio_power": 0.0},
    "T3D + TD": {"loss_type": ["ddo", "path", "td"], "loss_weights": [1.0, 0.2, 1.0]},
}


def study_config(**overrides: Any) -> Any:
    """The study's :class:`~t3d_trl.demo.DemoConfig`: :data:`STUDY_SETTINGS` and :data:`STUDY_VARIANTS` over the
    demo's defaults, then ``overrides``."""
    from t3d_trl.demo import DemoConfig

    values: dict[str, Any] = {**STUDY_SETTINGS, "extra_methods": copy.deepcopy(STUDY_VARIANTS)}
    values.update(overrides)
    return DemoConfig(**values)


class JsonStudentStore:
    """Students kept as ``<output_dir>/seed<k>/students/<name>.json`` with the settings they were trained with (the
    :class:`t3d_trl.demo.pipeline.StudentStore` of the study): a student is reused only for the same settings."""

    def __init__(self, output_dir: str | Path) -> None:
        self.root = Path(output_dir)

    def path(self, seed: int, method: str) -> Path:
        return self.root / f"seed{seed}" / "students" / (re.sub(r"[^A-Za-z0-9]+", "_", method).strip("_") + ".json")

    def load(self, seed: int, method: str, key: dict[str, Any]) -> dict[str, Any] | None:
        path = self.path(seed, method)
        if not path.exists():
            return None
        saved = json.loads(path.read_text())
        return saved if saved.get("key") == key else None

    def save(self, seed: int, method: str, key: dict[str, Any], entry: dict[str, Any]) -> None:
        path = self.path(seed, method)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"key": key, **entry}))


def plot(summary: dict[str, Any], config: Any, path: str | Path) -> None:
    """Average accuracy against tokens per step, one line per method (error bars: std over seeds); a second panel
    averages the multi-block tasks only when the tasks mix both kinds."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from t3d_trl.demo.report import multi_block_tasks

    colors = colormaps["tab20"]  # 20 distinct colours: the study has a dozen rows
    panels = [("every task", summary["averages"])]
    if 0 < len(multi_block_tasks(config)) < len(config.tasks):
        panels.append(("multi-block tasks", summary["multi_block_averages"]))
    figure = Figure(figsize=(6 * len(panels), 4.5))
    FigureCanvasAgg(figure)
    for index, (title, averages) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        for index_method, method in enumerate(summary["methods"]):
            means = [averages[method][t]["mean"] for t in config.tokens_per_step]
            stds = [averages[method][t]["std"] for t in config.tokens_per_step]
            style = (
                {"color": "black", "linestyle": "--", "linewidth": 2}
                if method == "Teacher"
                else {"color": colors(index_method % colors.N), "marker": "osD^v<>ph*"[index_method % 10]}
            )
            axes.errorbar(config.tokens_per_step, means, yerr=stds, capsize=3, label=method, **style)
        axes.set_xlabel("tokens per step")
        axes.set_ylabel("accuracy (%)")
        axes.set_xticks(list(config.tokens_per_step))
        axes.set_title(f"Few-step accuracy ({title}, block sizes {', '.join(map(str, config.eval_block_sizes))})")
        axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def run_study(config: Any) -> dict[str, Any]:
    """:func:`t3d_trl.demo.run_demo` with the study's student store, then the plot; returns the demo's report."""
    from t3d_trl.demo import run_demo

    report = run_demo(config, students=JsonStudentStore(config.output_dir))
    target = Path(config.output_dir) / "accuracy_vs_tokens_per_step.png"
    plot(report["summary"], config, target)
    print(f"Plot written to {target}")
    return report


def make_parser() -> argparse.ArgumentParser:
    """The demo's flags (one per :class:`~t3d_trl.demo.DemoConfig` field, ``--config`` and ``--print_config``),
    with the study's defaults."""
    from t3d_trl.scripts.demo import make_parser as demo_parser

    parser = demo_parser(prog="python examples/study.py")
    parser.description = (parser.description or "") + " The study's settings are the defaults (see STUDY_SETTINGS)."
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any] | Any:
    """Parse the flags, then print the config (``--print_config``) or run the study."""
    from t3d_trl.scripts.demo import demo_config_from_args

    (args,) = make_parser().parse_args_and_config(argv)
    overrides = {k: v for k, v in dataclasses.asdict(demo_config_from_args(args)).items() if _given(args, k)}
    config = study_config(**overrides)
    if args.print_config:
        from t3d_trl.scripts.utils import as_plain

        print(json.dumps(as_plain(dataclasses.asdict(config)), indent=2))
        return config
    return run_study(config)


def _given(args: Any, name: str) -> bool:
    """Whether the flag (or the YAML key) ``name`` was given: unset demo flags parse as ``None``."""
    return getattr(args, name, None) is not None


if __name__ == "__main__":
    main()
