"""Faults of `python -m applications.export`: real kills, and what the next run makes of them.

A fault test kills for real: the export program runs in a child process that is SIGKILLed at
a chosen point of the commit protocol (applications/export.py, module docstring), either from
outside or by itself through a patched function, so nothing of it (no `finally`, no `except`)
runs. The test then asserts the state on disk, and that rerunning the same export (here, in
this process: on JAX and torch that also repairs here and hands over to a TensorFlow child)
succeeds, removes every leftover and leaves a complete export that loads.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import keras
import pytest

from applications import export as export_app
from tests.helpers import once_in
from tests.test_export import (
    REPO_ROOT,
    _check_in_onnxruntime_only_process,
    _check_in_tensorflow_only_process,
    _keras_outputs,
    _small_model,
)

BACKEND = keras.backend.backend()
# The export program always exports in a TensorFlow process; its faults are the same whatever
# backend the caller runs. In the TensorFlow suite the re-runs export in the test's own process
# (on the other backends each would start a TensorFlow child: about 9 s of imports apiece).
pytestmark = [
    once_in("tensorflow", "the export program exports in a TensorFlow process"),
    pytest.mark.slow,
]

# Runs the export program (as `python -m applications.export` does) with one fault injected,
# chosen by argv[1]; argv[2] is the fault's path argument, the rest the program's flags.
_FAULTY_EXPORT = r"""
import os, signal, sys

os.environ["KERAS_BACKEND"] = "tensorflow"  # what the program sets when run as __main__
from absl import app
from applications import export

fault, where, flags = sys.argv[1], os.path.abspath(sys.argv[2]), sys.argv[3:]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if fault == "kill_after_rename_to":  # SIGKILL once `where` is renamed into place
    real_replace = os.replace
    def replace(source, destination, *args, **kwargs):
        real_replace(source, destination, *args, **kwargs)
        if os.path.abspath(destination) == where:
            die()
    os.replace = replace
elif fault == "kill_after_rename_of":  # SIGKILL once `where` is renamed away
    real_rename = os.rename
    def rename(source, destination, *args, **kwargs):
        real_rename(source, destination, *args, **kwargs)
        if os.path.abspath(source) == where:
            die()
    os.rename = rename
elif fault == "kill_at_check":  # SIGKILL when the check starts: every part is staged
    export.check_export = lambda *args, **kwargs: die()
elif fault == "check_fails":  # the check finds an export that disagrees with Keras
    export.check_export = lambda *args, **kwargs: {("SavedModel", "serve"): 0.5}
else:
    raise SystemExit(f"unknown fault {fault!r}")

export._define_flags()
app.run(export.main, argv=["applications.export", *flags])
"""


def _program_env():
    return dict(os.environ, PYTHONPATH=REPO_ROOT, KERAS_BACKEND="tensorflow")


def _flags(work):
    return [
        f"--model_path={work / 'model.keras'}",
        f"--saved_model_dir={work / 'sm'}",
        f"--onnx_path={work / 'onnx'}",
    ]


def _run_with_fault(work, fault, where):
    """Runs the export of `work`/model.keras with `fault`; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-c", _FAULTY_EXPORT, fault, str(where), *_flags(work)],
        cwd=work,
        env=_program_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _entries(directory):
    return sorted(os.listdir(directory))


def _partials(directory):
    return [name for name in _entries(directory) if ".partial-" in name]


def _rerun(work, capfd, **arguments):
    """The same export again, in this process (a TensorFlow child on JAX and torch); returns
    (errors, printed output)."""
    errors = export_app.run(
        str(work / "sm"),
        model_path=str(work / "model.keras"),
        onnx_path=str(work / "onnx"),
        **arguments,
    )
    captured = capfd.readouterr()
    return errors, captured.out + captured.err


def _assert_complete_export(work):
    """Both parts in place, each with a manifest of the same export, and no leftovers."""
    assert _entries(work) == ["model.keras", "onnx", "sm"]
    manifest = export_app.read_manifest(work / "sm")
    assert manifest is not None and export_app.is_complete(manifest)
    assert manifest["parts"] == {"saved_model": str(work / "sm"), "onnx": str(work / "onnx")}
    assert _entries(work / "onnx") == [
        "forward.onnx",
        "inverse.onnx",
        export_app.MANIFEST_FILE,
    ]
    assert "saved_model.pb" in _entries(work / "sm")
    return manifest


@pytest.fixture(scope="module")
def model_and_outputs(tmp_path_factory):
    """(a .keras file of a small i-RevNet, .npz of photos and its Keras outputs)."""
    model = _small_model()
    directory = tmp_path_factory.mktemp("model")
    model.save(directory / "model.keras")
    return directory / "model.keras", _keras_outputs(model, directory / "outputs.npz")


@pytest.fixture
def work(model_and_outputs, tmp_path):
    """A fresh directory holding model.keras; the exports go to sm/ and onnx/ in it."""
    keras_file, _ = model_and_outputs
    (tmp_path / "model.keras").write_bytes(keras_file.read_bytes())
    return tmp_path


def test_kill_between_the_two_renames_is_repaired_by_the_next_run(
    work, model_and_outputs, tmp_path_factory, capfd
):
    """Killed right after the ONNX directory is renamed into place, before the SavedModel is:
    the SavedModel is absent, the ONNX part is marked incomplete, and the same command removes
    it, exports, and the export loads in TensorFlow and onnxruntime alone."""
    killed = _run_with_fault(work, "kill_after_rename_to", work / "onnx")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    assert not (work / "sm").exists()  # no SavedModel: nothing looks exported
    onnx_part = export_app.read_manifest(work / "onnx")
    assert onnx_part is not None and not export_app.is_complete(onnx_part)
    assert [name.startswith(".sm.partial-") for name in _partials(work)] == [True]

    errors, printed = _rerun(work, capfd)
    assert f"Removed {work / 'onnx'}: left by an interrupted export." in printed
    assert any(f"Removed {work}/.sm.partial-" in line for line in printed.splitlines())
    manifest = _assert_complete_export(work)
    assert manifest["export_id"] != onnx_part["export_id"]
    assert len(errors) == 8 and all(e <= 1e-4 for e in errors.values()), errors

    _, data_path = model_and_outputs
    scratch = tmp_path_factory.mktemp("children")
    _check_in_tensorflow_only_process(work / "sm", data_path, scratch)
    _check_in_onnxruntime_only_process(work / "onnx", data_path, scratch)

    # The same command once more: already exported, exit status 0, nothing touched.
    before = {path: os.stat(work / path).st_mtime_ns for path in ("sm", "onnx")}
    again = subprocess.run(
        [sys.executable, "-m", "applications.export", *_flags(work)],
        cwd=work,
        env=_program_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-4000:]
    assert "Already exported:" in again.stdout
    assert {path: os.stat(work / path).st_mtime_ns for path in ("sm", "onnx")} == before
    assert export_app.read_manifest(work / "sm")["export_id"] == manifest["export_id"]


@pytest.mark.parametrize("when", ["from outside as staging begins", "at the check"])
def test_kill_while_staging_leaves_only_partials_which_the_next_run_removes(work, capfd, when):
    if when == "at the check":  # every part staged, no manifest written yet
        killed = _run_with_fault(work, "kill_at_check", work)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    else:
        assert _kill_when_staging_appears(work) == -signal.SIGKILL
    assert not (work / "sm").exists() and not (work / "onnx").exists()
    leftovers = _partials(work)
    assert leftovers, "nothing was staged when the kill came: the test proves nothing"
    assert _entries(work) == sorted(["model.keras", *leftovers])

    errors, printed = _rerun(work, capfd)
    for name in leftovers:
        assert f"Removed {work / name}: left by an interrupted export." in printed
    _assert_complete_export(work)  # and no .partial- entry left
    assert len(errors) == 8


def _kill_when_staging_appears(work, timeout=600):
    """Starts the export program and SIGKILLs it as soon as a staging directory of the
    SavedModel exists; returns its exit status."""
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "applications.export", *_flags(work)],
            cwd=work,
            env=_program_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + timeout
            while not any(n.startswith(".sm.partial-") for n in os.listdir(work)):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(
                        f"no staging directory appeared; the program said:\n{log.read()[-4000:]}"
                    )
                time.sleep(0.01)
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()  # a no-op if it is dead already; never leave it running
            status = process.wait()
    return status


def test_kill_while_removing_a_half_export_leaves_only_a_partial(work, capfd):
    """The repair renames a half export to a partial name before deleting it: killed right
    after that rename, what is left is a partial directory (removed by the next run), never a
    half-deleted export that would look like the user's."""
    onnx_part = _half_export(work)
    killed = _run_with_fault(work, "kill_after_rename_of", work / "onnx")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-4000:]
    assert not (work / "onnx").exists()
    leftovers = _partials(work)
    assert len(leftovers) == 1 and leftovers[0].startswith(".onnx.partial-")
    assert export_app.read_manifest(work / leftovers[0]) == onnx_part

    removed = export_app.clear_interrupted(export_app.export_targets(work / "sm", work / "onnx"))
    assert removed == [str(work / leftovers[0])]
    assert _entries(work) == ["model.keras"]


def test_failed_check_leaves_nothing(work):
    failed = _run_with_fault(work, "check_fails", work)
    assert failed.returncode == 1, failed.stderr[-4000:]
    assert "disagrees with Keras beyond --tolerance" in failed.stderr
    assert "nothing was written" in failed.stderr
    assert _entries(work) == ["model.keras"]  # no export, no partial directory


def _half_export(work, parts=None):
    """Writes by hand the ONNX part of an export whose SavedModel part is missing (what a kill
    between the renames leaves); returns its manifest."""
    parts = parts or {"saved_model": str(work / "sm"), "onnx": str(work / "onnx")}
    manifest = {
        "format": "keras_irevnet export",
        "version": 1,
        "export_id": "0123abcd",
        "part": "onnx",
        "parts": parts,
        "source": {"path": str(work / "model.keras")},
    }
    (work / "onnx").mkdir()
    (work / "onnx" / "forward.onnx").write_bytes(b"graph")
    (work / "onnx" / export_app.MANIFEST_FILE).write_text(json.dumps(manifest))
    return manifest


def _complete_export_by_hand(work, check):
    """Writes by hand the manifests of a complete export of work/model.keras (no graphs)."""
    targets = export_app.export_targets(work / "sm", work / "onnx")
    manifest = export_app.new_manifest(
        targets, export_app.export_identity(model_path=str(work / "model.keras"))
    )
    manifest["check"] = check
    for part, path in targets.items():
        os.mkdir(path)
        with open(os.path.join(path, export_app.MANIFEST_FILE), "w") as stream:
            json.dump({**manifest, "part": part}, stream)
    return manifest


def _contents(directory):
    return {
        os.path.relpath(os.path.join(root, name), directory): open(
            os.path.join(root, name), "rb"
        ).read()
        for root, _, names in os.walk(directory)
        for name in names
    }


@pytest.mark.parametrize("occupant", ["unrelated files", "an export to other directories"])
def test_occupied_targets_are_refused_and_left_untouched(work, occupant):
    """Only a half export to exactly this run's targets is ours to remove: unrelated files,
    or a part whose partner was named elsewhere (moved by the user?), are refused as today."""
    (work / "sm").mkdir()
    if occupant == "unrelated files":
        (work / "onnx").mkdir()
        (work / "onnx" / "notes.txt").write_text("mine")
        (work / "onnx" / export_app.MANIFEST_FILE).write_text("{not ours")
        expected = r"--onnx_path: the directory .* already exists and is not empty"
    else:
        _half_export(work, {"saved_model": str(work / "elsewhere"), "onnx": str(work / "onnx")})
        expected = r"(?s)--onnx_path: .*not empty.*holds the ONNX graphs of an earlier export"
    before = _contents(work)
    with pytest.raises(FileExistsError, match=expected):
        export_app.run(
            str(work / "sm"), model_path=str(work / "model.keras"), onnx_path=str(work / "onnx")
        )
    assert _contents(work) == before
    assert _entries(work) == ["model.keras", "onnx", "sm"]


def test_already_exported_depends_on_the_source_and_the_check(work, capfd):
    """A complete export of the same file is done (exit 0); of another file it is refused;
    recorded without the check it is refused when the check is asked for, saying what to do."""
    _complete_export_by_hand(work, check={"tolerance": 1e-4, "errors": {"ONNX": {"serve": 3e-7}}})
    errors, printed = _rerun(work, capfd)
    assert errors == {("ONNX", "serve"): 3e-7}
    assert "Already exported:" in printed and "largest relative error 3.00e-07" in printed

    with pytest.raises(FileExistsError, match=r"beyond --tolerance=1e-08.*--tolerance=3.00e-07"):
        _rerun(work, capfd, tolerance=1e-8)

    (work / "model.keras").write_bytes((work / "model.keras").read_bytes() + b"\0")  # retrained
    with pytest.raises(FileExistsError, match="differs from this run's in its source file"):
        _rerun(work, capfd)


def test_already_exported_without_the_check_needs_nocheck(work, capfd):
    _complete_export_by_hand(work, check=None)
    with pytest.raises(FileExistsError, match=r"with --nocheck.*or pass --nocheck to keep it"):
        _rerun(work, capfd)
    errors, printed = _rerun(work, capfd, check=False)
    assert errors == {} and "Already exported:" in printed and "not checked" in printed
