"""``t3d-trl import``: read the trajectories of another producer into a trajectory dataset.

```bash
t3d-trl import --dataset_path SDAR-4B-Chat-MATH_train_renamed.json --format t3d-json \\
    --tokenizer_name_or_path JetLM/SDAR-4B-Chat --block_size 4 --steps_per_block 4 --output_dir trajectories/math
t3d-trl train --config train.yaml --dataset_path trajectories/math
```

See ``docs/cli.md`` (``t3d-trl import``) and ``docs/rollouts.md`` ("Bring your own trajectories").
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from .arguments import ImportArguments, ModelArguments
from .utils import load_dataset_from_args, load_tokenizer, make_script_parser

HELP = (
    "Read trajectories of another producer (the official T3D JSON, JetEngine, SGLang, diffusers) into a trajectory "
    "dataset, dropping and counting the samples that cannot be used."
)
EXAMPLES = """examples:
  t3d-trl import --dataset_path SDAR-4B-Chat-MATH_train_renamed.json --format t3d-json \\
      --tokenizer_name_or_path JetLM/SDAR-4B-Chat --block_size 4 --steps_per_block 4 --output_dir trajectories/math
  t3d-trl import --dataset_path sglang_outputs.jsonl --format sglang --model_name_or_path JetLM/SDAR-1.7B-Chat \\
      --block_size 4 --strict"""


def _source(args: ImportArguments) -> Any:
    """The records: a local file or saved dataset as its path (read by ``import_trajectories``, whose reader takes
    the official JSON's mixed fields), a Hub dataset loaded; the first ``--max_samples`` records only when asked."""
    from ..rollout.exchange import _read_records

    local = args.dataset_name if args.dataset_name is not None and os.path.exists(args.dataset_name) else None
    path = args.dataset_path or local
    if path is None:
        return load_dataset_from_args(args)  # a Hub dataset, or the error naming the flags
    if args.max_samples is None:
        return path
    if args.max_samples < 1:
        raise ValueError(f"--max_samples must be positive, got {args.max_samples}.")
    return _read_records(path)[: args.max_samples]


def main(model_args: ModelArguments, import_args: ImportArguments) -> Any:
    """Import the records and save the trajectory dataset to ``--output_dir``; prints one line: rows in, rows out,
    dropped by reason.

    Args:
        model_args: the teacher's tokenizer (``--tokenizer_name_or_path`` or ``--model_name_or_path``).
        import_args: the records, their format, the teacher's block settings and the output directory.

    Returns:
        The trajectory dataset.
    """
    from ..rollout import format_import_summary, import_summary, import_trajectories

    tokenizer = load_tokenizer(model_args)
    dataset = import_trajectories(
        _source(import_args),
        tokenizer,
        import_args.format,
        block_size=import_args.block_size,
        steps_per_block=import_args.steps_per_block,
        model_family=import_args.model_family,
        eos_token_id=import_args.eos_token_id,
        strict=import_args.strict,
    )
    dataset.save_to_disk(import_args.output_dir)
    print(f"Imported {format_import_summary(import_summary(dataset))}; saved to {import_args.output_dir}")
    return dataset


def make_parser(subparsers: argparse._SubParsersAction | None = None, prog: str | None = None) -> Any:
    """The parser of ``t3d-trl import``: tokenizer and import flags (see :func:`make_script_parser`)."""
    return make_script_parser("import", (ModelArguments, ImportArguments), HELP, EXAMPLES, subparsers, prog)


if __name__ == "__main__":  # the same program as `t3d-trl import` (one-line errors, --debug, --verbose)
    import sys

    from ..cli import main as cli_main

    sys.exit(cli_main(["import", *sys.argv[1:]]))
