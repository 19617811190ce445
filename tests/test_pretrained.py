"""`IRevNetBijective(weights="imagenet")`: the Keras Applications rules, the download, the
one-time conversion, the cache, and refusals of files that are not the checkpoint.

The authors' real file cannot be reached from here: a checkpoint in their layout, written by
the plain-torch reference (benchmarks/torch_irevnet.py), stands in for it through a file://
URL, as `KERAS_IREVNET_WEIGHTS_URL` allows.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import keras_irevnet as kir
from keras_irevnet import _compat, pretrained
from tests.helpers import IMPORT_BLOCKER, once_in

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- The rules, checked before anything is downloaded ---------------------------------------


def test_only_the_bijective_preset_has_imagenet_weights():
    with pytest.raises(ValueError, match="the 'cifar' i-RevNet has no published weights"):
        kir.IRevNetCIFAR(weights="imagenet")
    with pytest.raises(ValueError, match="the 'injective' i-RevNet has no published weights"):
        kir.IRevNet.from_preset("injective", weights="imagenet")
    with pytest.raises(ValueError, match=r'use IRevNetBijective\(weights="imagenet"\)'):
        kir.IRevNet(blocks=(1,), strides=(1,), channels=(6,), weights="imagenet")


def test_keras_applications_rules_for_imagenet_weights():
    with pytest.raises(ValueError, match="needs `classes=1000`.*got classes=10"):
        kir.IRevNetBijective(weights="imagenet", classes=10)
    with pytest.raises(ValueError, match=r"needs `input_shape=\(224, 224, 3\)`.*\(160, 160, 3\)"):
        kir.IRevNetBijective(weights="imagenet", input_shape=(160, 160, 3))
    with pytest.raises(ValueError, match="must end in 3 channels"):
        kir.IRevNetBijective(weights="imagenet", include_top=False, input_shape=(64, 64, 1))


# --- Downloads that are not the checkpoint ---------------------------------------------------


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty Keras home for this test."""
    home = tmp_path / "keras_home"
    monkeypatch.setattr(_compat, "keras_home", lambda: str(home))
    return home / pretrained.CACHE_SUBDIR


@once_in("torch", "reading a checkpoint needs torch; the rest is backend-independent")
@pytest.mark.parametrize("kind", ["html page", "truncated checkpoint", "text"])
def test_a_download_that_is_not_the_checkpoint_is_refused_and_not_cached(
    kind, tmp_path, cache, monkeypatch
):
    import torch

    source = tmp_path / "download"
    if kind == "html page":
        source.write_text("<!DOCTYPE html><html><body>Google Drive can't scan this file")
    elif kind == "truncated checkpoint":
        torch.save({"state_dict": {"module.bn1.weight": torch.ones(3)}}, source)
        source.write_bytes(source.read_bytes()[:40])
    else:
        source.write_text("not a checkpoint at all")
    monkeypatch.setenv(pretrained.URL_VARIABLE, source.as_uri())
    with pytest.raises(ValueError) as error:
        pretrained.imagenet_weights_file()
    message = str(error.value)
    assert "nothing was cached" in message and source.as_uri() in message
    if kind == "html page":
        assert "HTML page" in message
    assert not cache.exists() or os.listdir(cache) == []


# --- The whole path, with a checkpoint in the authors' layout --------------------------------

_FIRST_USE = """
import json, sys
import numpy as np
import keras_irevnet as kir

x = np.load(sys.argv[1])
model = kir.IRevNetBijective(weights="imagenet", classifier_activation=None)
np.save(sys.argv[2], np.asarray(model.predict(x, verbose=0)))
"""

# Later uses: torch cannot even be imported, and the URL points nowhere.
_LATER_USE = """
import sys
import keras
import numpy as np
import keras_irevnet as kir

x = np.load(sys.argv[1])
model = kir.IRevNetBijective(weights="imagenet", classifier_activation=None)
np.save(sys.argv[2], keras.ops.convert_to_numpy(model(x)))
headless = kir.IRevNetBijective(weights="imagenet", include_top=False, input_shape=(96, 96, 3))
phi = keras.ops.convert_to_numpy(headless.features(x[:, 64:160, 64:160]))
np.save(sys.argv[3], phi)
"""


def _python(code, args, env, blocked=()):
    blocker = IMPORT_BLOCKER.format(blocked=tuple(blocked)) if blocked else ""
    done = subprocess.run(
        [sys.executable, "-c", blocker + textwrap.dedent(code), *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


@once_in("torch", "the conversion reads the checkpoint with torch")
@pytest.mark.slow
def test_first_use_converts_and_caches_later_uses_need_neither_network_nor_torch(tmp_path):
    import torch

    from benchmarks.torch_irevnet import TorchIRevNet
    from keras_irevnet.models import PRESETS
    from tests.helpers import preprocessed_photos, relative_error
    from tests.test_official_weights import save_official_checkpoint

    torch.manual_seed(0)
    checkpoint = tmp_path / "i-revnet-301.pth.tar"
    network = TorchIRevNet(**PRESETS["bijective"].architecture).eval()
    save_official_checkpoint(network, checkpoint)
    photos = tmp_path / "photos.npy"
    np.save(photos, preprocessed_photos(224, 2))
    # What the checkpoint's own network computes (NCHW), for the full and the headless model.
    with torch.no_grad():
        nchw = torch.from_numpy(np.load(photos).transpose(0, 3, 1, 2))
        logits = network(nchw)[0].numpy()
        phi = network.features(nchw[:, :, 64:160, 64:160]).numpy().transpose(0, 2, 3, 1)
    home = tmp_path / "keras_home"
    env = dict(
        os.environ,
        KERAS_HOME=str(home),
        PYTHONPATH=REPO,
        KERAS_IREVNET_WEIGHTS_URL=checkpoint.as_uri(),
    )

    _python(_FIRST_USE, [photos, tmp_path / "first.npy"], dict(env, KERAS_BACKEND="torch"))
    cached = sorted(os.listdir(home / pretrained.CACHE_SUBDIR))
    assert cached == [pretrained.CHECKPOINT_FILE, pretrained.CONVERTED_FILES[True]]
    assert relative_error(np.load(tmp_path / "first.npy"), logits) <= 1e-5

    env_later = dict(
        env,
        KERAS_BACKEND="tensorflow",
        KERAS_IREVNET_WEIGHTS_URL=(tmp_path / "nowhere.pth.tar").as_uri(),
    )
    _python(
        _LATER_USE,
        [photos, tmp_path / "later.npy", tmp_path / "phi.npy"],
        env_later,
        blocked=("torch",),
    )
    assert relative_error(np.load(tmp_path / "later.npy"), logits) <= 1e-5
    assert relative_error(np.load(tmp_path / "phi.npy"), phi) <= 1e-5
    assert pretrained.CONVERTED_FILES[False] in os.listdir(home / pretrained.CACHE_SUBDIR)


@once_in("jax", "the message is the same on every backend")
def test_converting_without_torch_says_what_to_install(tmp_path):
    home = tmp_path / "keras_home"
    (home / pretrained.CACHE_SUBDIR).mkdir(parents=True)
    (home / pretrained.CACHE_SUBDIR / pretrained.CHECKPOINT_FILE).write_bytes(b"PK\x03\x04")
    env = dict(os.environ, KERAS_HOME=str(home), PYTHONPATH=REPO, KERAS_BACKEND="jax")
    code = """
    import keras_irevnet as kir
    try:
        kir.IRevNetBijective(weights="imagenet")
    except ImportError as error:
        print("ImportError:", error)
    """
    out = _python(code, [], env, blocked=("torch",)).stdout
    assert "needs torch (pip install torch)" in out
    assert "applications.convert" in out and pretrained.CONVERTED_FILES[True] in out
