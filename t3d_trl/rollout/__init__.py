"""Teacher rollouts into the trajectory format (``docs/rollouts.md``).

:func:`generate_trajectories` runs a block diffusion teacher over the prompts of a dataset with the few-step
``generate()`` of :func:`t3d_trl.patch_model` and returns one row per sample (``num_generations`` per prompt, a
prompt's samples consecutive, numbered by ``sample_index``) with the teacher's own token ids and, for every
completion token, the denoising step that committed it (``step_map``). The rows are what
:func:`t3d_trl.data.prepare_trajectory_dataset` and the T3D trainer read.

Three properties hold by construction:

* **Order and batch independence.** Prompts are sorted by length (longest first), cut into batches of
  ``batch_size`` and the results are put back in the dataset's order. Batches are a function of the tokenised
  prompts and ``batch_size`` only; every batch decodes all ``num_generations`` samples of its prompts in one
  ``generate(..., num_return_sequences=n)`` call with its own generator, seeded from ``(seed, batch index)``, so a
  rerun gives the same rows.
* **Multi-process = one process.** Under ``accelerate launch`` the *batches* (not the prompts) are dealt out to the
  processes, so every batch has the same content and the same generator seed as in a one-process run; the rows are
  gathered and every process returns the same dataset, identical to a one-process run.
* **Resumable.** With ``output_dir`` every finished batch is written to ``output_dir/shards`` (atomically) as soon
  as it finishes; a rerun with the same settings reads the finished rows back (it never recomputes them) and only
  generates the rest. The final dataset (``output_dir/dataset``) and the ``done`` marker are written only once every
  prompt has its rows. A rerun with other settings or other teacher weights is refused, naming what differs; a
  damaged shard is named, with how to recover.

The package holds the rollout loop (:mod:`~t3d_trl.rollout.loop`: settings, prompt batching, generation), the
resumable shard store (:mod:`~t3d_trl.rollout.store`), the Hub card and push (:mod:`~t3d_trl.rollout.hub`), and the
exchange with other producers (:mod:`~t3d_trl.rollout.exchange`: :func:`import_trajectories` and
:func:`export_trajectories` for the official T3D JSON, JetEngine, SGLang and diffusers, whose conventions
:mod:`~t3d_trl.rollout.conventions` converts; :mod:`~t3d_trl.rollout.block_refinement` records diffusers' pipelines).
"""

from .block_refinement import BlockRefinementRecorder
from .exchange import (
    TRAJECTORY_FORMATS,
    RawTrajectory,
    TrajectoryFormat,
    export_trajectories,
    format_import_summary,
    import_summary,
    import_trajectories,
    register_trajectory_format,
    trajectory_format,
)
from .hub import push_trajectories_to_hub, trajectory_dataset_card, trajectory_dataset_card_text
from .loop import (
    ROLLOUT_COLUMNS,
    ROLLOUT_METADATA_KEY,
    check_rollout_settings,
    generate_trajectories,
    resolve_generation_config,
    rollout_config,
    weights_sha256,
)

__all__ = [
    "ROLLOUT_COLUMNS",
    "ROLLOUT_METADATA_KEY",
    "TRAJECTORY_FORMATS",
    "BlockRefinementRecorder",
    "RawTrajectory",
    "TrajectoryFormat",
    "check_rollout_settings",
    "export_trajectories",
    "format_import_summary",
    "generate_trajectories",
    "import_summary",
    "import_trajectories",
    "push_trajectories_to_hub",
    "register_trajectory_format",
    "resolve_generation_config",
    "rollout_config",
    "trajectory_dataset_card",
    "trajectory_dataset_card_text",
    "trajectory_format",
    "weights_sha256",
]
