"""keras_irevnet.atomic: files and directories appear complete or not at all."""

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from keras_irevnet import atomic
from tests.helpers import once_in

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = once_in("jax", "keras_irevnet.atomic is plain Python")


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_file_appears_whole_with_the_usual_permissions(tmp_path):
    path = tmp_path / "sub" / "model.weights.h5"
    with atomic.atomic_path(path) as temporary:
        # Writers that check the extension (Keras' save_weights) see the whole one.
        assert temporary.endswith(".weights.h5") and os.path.dirname(temporary) == str(path.parent)
        assert atomic.is_partial(os.path.basename(temporary))
        with open(temporary, "w") as f:
            f.write("new")
        assert not path.exists()
    assert path.read_text() == "new"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~_umask()
    assert os.listdir(path.parent) == ["model.weights.h5"]


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic.atomic_open(path) as f:
            f.write("half of the new")
            raise RuntimeError("disk full")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["metrics.json"]


def test_a_directory_replaces_only_an_empty_one(tmp_path):
    target = tmp_path / "export"
    with atomic.atomic_path(target, directory=True) as staging:
        (open(os.path.join(staging, "a.txt"), "w")).close()
    assert os.listdir(target) == ["a.txt"]
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o777 & ~_umask()
    with pytest.raises(OSError):
        with atomic.atomic_path(target, directory=True) as staging:
            (open(os.path.join(staging, "b.txt"), "w")).close()
    assert os.listdir(target) == ["a.txt"] and os.listdir(tmp_path) == ["export"]


def test_json_is_standard_json(tmp_path):
    path = tmp_path / "metrics.json"
    atomic.write_json(
        path,
        {
            "loss": float("nan"),
            "top1": np.float32(0.5),
            "steps": np.int64(3),
            "curve": [1.0, float("inf")],
            "shape": np.array([2, 3]),
        },
    )

    def refuse(constant):
        raise ValueError(constant)

    assert json.loads(path.read_text(), parse_constant=refuse) == {
        "loss": None,
        "top1": 0.5,
        "steps": 3,
        "curve": [1.0, None],
        "shape": [2, 3],
    }
    path.write_text('{"a": ')
    with pytest.raises(ValueError, match=rf"{path} is not valid JSON .*Do this\."):
        atomic.read_json(path, what="Do this.")


def test_atomic_open_writes_whole_files_only(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb'"):
        with atomic.atomic_open(tmp_path / "x", "a"):
            pass


@pytest.mark.slow
def test_a_killed_writer_leaves_the_old_file_and_a_leftover_that_is_cleared(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("old\n")
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {REPO!r})
        from keras_irevnet import atomic
        with atomic.atomic_open({str(path)!r}) as f:
            f.write("new line\\n" * 1000)
            f.flush()
            print("writing", flush=True)
            time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "writing"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert path.read_text() == "old\n"
    leftovers = [n for n in os.listdir(tmp_path) if n != "history.csv"]
    assert len(leftovers) == 1 and atomic.is_partial(leftovers[0])
    (tmp_path / ".other.partial-abc123").write_text("another file's leftover")
    assert atomic.remove_partials(tmp_path, name="history.csv") == [str(tmp_path / leftovers[0])]
    assert sorted(os.listdir(tmp_path)) == [".other.partial-abc123", "history.csv"]
    atomic.remove_partials(tmp_path)
    assert os.listdir(tmp_path) == ["history.csv"]
