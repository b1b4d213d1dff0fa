"""Job backends: one protocol (`base.JobBackend`), implemented by `local` (subprocess) and `slurm`."""
