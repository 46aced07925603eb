"""Checkpoints: ``atomic`` (the save protocol: temp directory, manifest, rename, completion marker;
which tag a resume takes), ``run_state`` (a run's state on disk: resume, save, rollback, guarded
start), ``files`` (reading checkpoint and Hugging Face weight files), ``lock`` (one job per save
directory), ``reshard`` (resume at another TP/DP layout), ``rng`` (generator states), ``hooks``
(the after-save command)."""
