"""The parts of applications/train.py, one job per module: model presets and the learning-rate
schedule (presets), the optimizer (optimizer), devices and distribution (distribute),
checkpoints and resumption (checkpoints), final evaluation (evaluation)."""
