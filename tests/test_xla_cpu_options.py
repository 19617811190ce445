"""keras_irevnet.models.xla_cpu_options: the models' compiled JAX steps on CPU leave XLA's
YNNPACK fusions out, and a user's own XLA_FLAGS choice wins."""

import glob

import keras
import numpy as np
import pytest

import keras_irevnet as kir
from keras_irevnet.models import xla_cpu_options

BACKEND = keras.backend.backend()
needs_jax = pytest.mark.skipif(BACKEND != "jax", reason="options for JAX's XLA compilations")


def test_options_only_on_jax_and_not_over_the_users_flags(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    options = xla_cpu_options.jax_compiler_options()
    if BACKEND != "jax":
        assert options is None
        return
    assert options == {xla_cpu_options.YNN_FUSION_OPTION: ""}
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
    assert xla_cpu_options.jax_compiler_options() is None


def _compiled_programs(monkeypatch, tmp_path, options, predict_only=False):
    """The optimized HLO of every step the model compiles, dumped by XLA itself."""
    dump = dict(options or {}, xla_dump_to=str(tmp_path), xla_dump_hlo_as_text=True)
    monkeypatch.setattr(xla_cpu_options, "jax_compiler_options", lambda: dump)
    keras.utils.set_random_seed(0)
    model = kir.IRevNetCIFAR(blocks=(1, 1, 1), input_shape=(32, 32, 3))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype("float32")
    y = np.arange(4)
    model.predict_on_batch(x)
    if not predict_only:
        model.train_on_batch(x, y)
        model.test_on_batch(x, y)
        model.inverse_model().predict_on_batch(model.features(x))
    programs = {}
    for path in glob.glob(str(tmp_path / "*after_optimizations.txt")):
        step = path.split(".")[1]  # module_0012.jit_train_step.cpu_after_...
        programs.setdefault(step, []).append(open(path).read())
    return programs


@needs_jax
def test_every_compiled_step_is_built_with_the_options(monkeypatch, tmp_path):
    options = xla_cpu_options.jax_compiler_options()
    programs = _compiled_programs(monkeypatch, tmp_path / "ours", options)
    assert {"jit_train_step", "jit_test_step", "jit_predict_step"} <= set(programs)
    assert len(programs["jit_predict_step"]) == 2  # the model's and its inverse's
    for step, texts in programs.items():
        for text in texts:
            assert "ynn" not in text, step
    # Without the options XLA's CPU compiler does hand these steps to YNNPACK (so the
    # assertions above can fail, and show when a newer XLA stops doing so).
    default = _compiled_programs(monkeypatch, tmp_path / "xla", None, predict_only=True)
    assert any("ynn" in text for text in default["jit_predict_step"])
