"""``advisor sweep``: grids of real fine-tuning runs through existing engines (submitit's local
executor or Slurm job arrays; more through the ``register_executors`` hook), into one shared
history, resumable and safe under faults. See docs/sweeps.md.

Layers: ``grid`` (what to run) -> ``controller`` (plan against the history, launch, watch,
retry) -> ``executor`` (the plugin interface) -> ``worker`` (claims jobs, runs them with the
code behind ``advisor run``, records or spools each run). Job state lives in
``advisor.history.sweeps``.
"""

from .grid import JobConfig, SweepGrid, grid_from_options, load_sweep_file

__all__ = ["JobConfig", "SweepGrid", "grid_from_options", "load_sweep_file"]
