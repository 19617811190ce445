"""An earlier commit of keras_irevnet against this checkout, each beside the reference.

    python -m benchmarks.before_after --before=2417daf --models=cifar,bijective

Checks out `--before` in a temporary git worktree, gives it this checkout's `benchmarks/` (so
both are measured by the same harness), and runs `benchmarks.interleaved` there and here in
turn, backend by backend: each library's steps are interleaved with the plain-torch
reference's in its own process, so each multiple of the reference is taken against a
reference that ran beside it, and the two states of one backend minutes apart. Writes
`before_after.json` and `before_after.md` (a row per measurement, the multiple of the
reference before and after; for memory-efficient training also its time over plain's) to
`--output_dir`; each state's `interleaved.json` goes in a folder of its own there.
"""

import os
import shutil
import subprocess
import sys
import tempfile

from absl import app, flags

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = ("backend", "model", "work", "call", "memory_efficient")


def _define_flags():
    flags.DEFINE_string("before", None, "The commit (or any git revision) to compare with.")
    flags.DEFINE_list("backends", ["tensorflow", "jax", "torch"], "Keras backends.")
    flags.DEFINE_list("models", ["cifar"], "cifar, bijective.")
    flags.DEFINE_list("calls", ["on_batch"], "on_batch (train_on_batch, predict_on_batch), fit.")
    flags.DEFINE_bool("memory_efficient", True, "Also train with reversible backprop.")
    flags.DEFINE_integer("steps", 6, "Timed steps of each (see benchmarks.interleaved).")
    flags.DEFINE_string("output_dir", "runs/benchmarks/before_after", "Where the results go.")
    flags.mark_flag_as_required("before")


def _git(*args, cwd=ROOT):
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def _interleaved(checkout, backend, output_dir):
    """`benchmarks.interleaved` for one backend, run in `checkout` with its library."""
    from keras_irevnet import atomic  # imports Keras: not at start-up, the workers need it

    command = [sys.executable, "-m", "benchmarks.interleaved", f"--backends={backend}"]
    command += [f"--models={','.join(FLAGS.models)}", f"--calls={','.join(FLAGS.calls)}"]
    command += [f"--memory_efficient={FLAGS.memory_efficient}", f"--steps={FLAGS.steps}"]
    command += [f"--output_dir={output_dir}"]
    env = dict(os.environ, PYTHONPATH=checkout)  # its own keras_irevnet, not the installed one
    run = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(
            f"benchmarks.interleaved failed for {backend} in {checkout} (exit status "
            f"{run.returncode}):\n{run.stderr[-3000:]}"
        )
    return atomic.read_json(os.path.join(output_dir, "interleaved.json"))


def table(before, after, labels):
    """Markdown rows pairing `before` and `after` results (lists of `interleaved` dicts)."""

    def keyed(results):
        return {tuple(r[k] for k in KEY): r for r in results}

    before, after = keyed(before), keyed(after)
    lines = [
        f"| backend | model | work | called by | memory_efficient | {labels[0]}: x ref | "
        f"{labels[1]}: x ref | {labels[0]}: time / plain | {labels[1]}: time / plain |",
        "|---|---|---|---|---|---:|---:|---:|---:|",
    ]
    for key in sorted(set(before) | set(after), key=lambda k: tuple(map(str, k))):
        cells = [_cell(state.get(key), "x_reference") for state in (before, after)]
        cells += [_cell(state.get(key), "time_over_plain") for state in (before, after)]
        lines.append("| " + " | ".join(map(str, key)) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(result, field):
    if result is None or result.get(field) is None:
        return ""
    return f"{result[field]:.2f}x"


def main(argv):
    del argv
    from keras_irevnet import atomic

    before_commit = _git("rev-parse", "--short", FLAGS.before)
    after_commit = _git("rev-parse", "--short", "HEAD")
    if _git("status", "--porcelain", "--untracked-files=no"):
        after_commit += " with uncommitted changes"
    output_dir = os.path.abspath(FLAGS.output_dir)
    results = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as scratch:
        worktree = os.path.join(scratch, "before")
        # A run killed before its clean-up leaves its worktree registered: forget those
        # whose folders are gone.
        _git("worktree", "prune")
        _git("worktree", "add", "--detach", worktree, before_commit)
        try:
            shutil.rmtree(os.path.join(worktree, "benchmarks"))
            shutil.copytree(os.path.join(ROOT, "benchmarks"), os.path.join(worktree, "benchmarks"))
            for backend in FLAGS.backends:
                for state, checkout in (("before", worktree), ("after", ROOT)):
                    print(f"{backend}: {state}", flush=True)
                    results[state] += _interleaved(
                        checkout, backend, os.path.join(output_dir, state, backend)
                    )
        finally:
            _git("worktree", "remove", "--force", worktree)
    labels = (f"before ({before_commit})", f"after ({after_commit})")
    markdown = table(results["before"], results["after"], labels)
    print(markdown)
    atomic.write_json(
        os.path.join(output_dir, "before_after.json"),
        {"before": before_commit, "after": after_commit, **results},
    )
    with atomic.atomic_open(os.path.join(output_dir, "before_after.md")) as f:
        f.write(markdown)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
