"""The parts of applications/train.py, one job per module: the training recipes and the
learning-rate schedule (recipes), the optimizer (optimizer), the metrics (metrics), devices,
processes and distribution (distribute), checkpoints and exact resumption (checkpoints), the
run's recorded flags (run_config) and stopping a diverging run (divergence)."""
