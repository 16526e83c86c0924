"""The sweep engine: runs every planned run of a profile, each at most once, and resumes what was cut.

How a sweep runs (`lorastudy sweep PROFILE`; the modules that do each part in brackets):

- **Workers** (`executors`, `runner`). `--workers auto` runs as many runs side by side as the cores allow at the
  profile's `execution.threads_per_run` (1 in `tiny` and `mini`: two 1-thread runs outpace one 2-thread run on
  2 cores, and a run's numbers do not depend on how many run beside it), bounded by free memory; one at a time on
  a GPU machine. Each local worker is one process keeping one Jupyter kernel for all its runs, its namespace
  cleared around each notebook, so only a worker's first run pays the kernel start-up; after a failed run the
  kernel is started afresh. `--executor slurm` submits every run as one task of a submitit job array (`cluster:
  local` runs the same jobs here, which is how the tests exercise it).
- **Longest first** (`schedule`). A free worker takes the longest waiting run by an estimate of its training
  work (tokens of its longest duration plus its cooldown branches, a LoRA step weighted by its measured cost), so
  the long runs do not come last and leave a core idle. The order moves no number.
- **Never twice.** Each run trains under an OS file lock (`runs/RUN_ID/.lock`): two workers, or two sweeps on one
  output folder, never train the same run; a killed worker's lock dies with it and the next sweep takes the run
  up again. `runs/RUN_ID/attempts.jsonl` has a line per attempt; `results.json` is a finished run's marker.
- **Resume after preemption** (`lorastudy.train.training`). With `training.save_every_steps` Trainer's full state
  is saved that often; a killed run goes on from its newest complete state and ends bit for bit as an
  uninterrupted run (`tests/test_resume.py`). Without it (mini, tiny) a killed run goes on from its newest branch
  point.
- **Learning-rate choice** (`lorastudy.tuning`). Other seeds of a selecting arm wait until its first-seed
  candidates have chosen a rate on validation; an edge winner trains the rate beyond it once.
- **Notebooks** (`notebook_exec`). Each run is `notebooks/01_finetune.ipynb` and `02_evaluate.ipynb` executed
  with papermill; their output goes to `runs/RUN_ID/sweep.log`, each chapter's to `analyses/NAME.log`; the
  terminal shows one progress bar and one line per finished run.
- **The allocator** (`allocator`). Training and evaluation processes preload tcmalloc when it is installed (the
  same numbers, faster on CPU); `LORASTUDY_MALLOC=system` keeps glibc's malloc.

Measured throughput and its history: `LOG.md` and `benchmarks/`.
"""
