"""keras_irevnet.models.xla_cpu_options: the models' compiled JAX steps on CPU keep their
convolutions out of XLA's YNNPACK fusions and give it their matrix products, and a user's
own XLA_FLAGS choice wins."""

import glob
import re

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
    assert options == {xla_cpu_options.YNN_FUSION_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")
    assert xla_cpu_options.jax_compiler_options() is None


@needs_jax
def test_options_an_older_xla_refuses_are_not_passed(monkeypatch):
    # This XLA refuses these for real (an unknown fusion type, an unknown option), as older
    # ones refuse INDIVIDUAL_DOT or the YNN option itself.
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setattr(xla_cpu_options, "YNN_FUSION_TYPES", "LIBRARY_FUSION_TYPE_NO_SUCH")
    options = xla_cpu_options.jax_compiler_options()
    assert options == {xla_cpu_options.YNN_FUSION_OPTION: ""}
    monkeypatch.setattr(xla_cpu_options, "YNN_FUSION_OPTION", "xla_cpu_no_such_option")
    assert xla_cpu_options.jax_compiler_options() is None


def _wide_model():
    # Its second stage's kernels are wide against its 2x2 images, as in the ImageNet
    # models' 7x7 stage: one of its convolutions is a matrix product.
    return kir.IRevNet(
        blocks=(1, 1), strides=(1, 2), channels=(12, 48), classes=4, input_shape=(8, 8, 3)
    )


def _cifar_model():
    # Channels enough for XLA's default to hand its convolutions to YNNPACK.
    return kir.IRevNetCIFAR(blocks=(1, 1, 1), input_shape=(32, 32, 3))


def _compiled_programs(monkeypatch, tmp_path, options, model, predict_only=False):
    """The optimized HLO of every step `model()` compiles, dumped by XLA itself."""
    dump = dict(options or {}, xla_dump_to=str(tmp_path), xla_dump_hlo_as_text=True)
    monkeypatch.setattr(xla_cpu_options, "jax_compiler_options", lambda: dump)
    keras.utils.set_random_seed(0)
    model = model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    shape = (4,) + tuple(model.input_shape[1:])
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
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


def _ynn_fusions(text):
    """The bodies of the computations that a program hands to YNNPACK."""
    called = re.findall(r"fusion\(.*calls=(%[\w.-]+).*__ynn_fusion", text)
    bodies = {}
    for name in called:
        start = text.index(f"\n{name} ")
        bodies[name] = text[start : text.index("\n}", start)]
    return bodies


@needs_jax
def test_every_compiled_step_is_built_with_the_options(monkeypatch, tmp_path):
    options = xla_cpu_options.jax_compiler_options()
    programs = {}
    # Every step of the small model; the predictions of CIFAR's, whose convolutions XLA
    # would give YNNPACK (below).
    for name, model, predict_only in [("wide", _wide_model, False), ("cifar", _cifar_model, True)]:
        for step, texts in _compiled_programs(
            monkeypatch, tmp_path / name, options, model, predict_only
        ).items():
            programs.setdefault(step, []).extend(texts)
    assert {"jit_train_step", "jit_test_step", "jit_predict_step"} <= set(programs)
    assert len(programs["jit_predict_step"]) == 3  # the models' and the small one's inverse
    with_products = set()
    for step, texts in programs.items():
        for text in texts:
            fusions = _ynn_fusions(text).values()
            assert not [body for body in fusions if " convolution(" in body], step
            if [body for body in fusions if " dot(" in body]:
                with_products.add(step)
    # The wide convolution's matrix product goes to YNNPACK, in training (with its
    # gradients) and in the model's predictions. (The model's inverse drops that
    # convolution: its block pads its input with zeros, which the inverse drops too.)
    assert {"jit_train_step", "jit_test_step", "jit_predict_step"} <= with_products
    # Without the options XLA's CPU compiler does hand convolutions to YNNPACK (so the
    # assertions above can fail, and show when a newer XLA stops doing so).
    default = _compiled_programs(
        monkeypatch, tmp_path / "xla", None, _cifar_model, predict_only=True
    )
    assert any(
        " convolution(" in body
        for text in default["jit_predict_step"]
        for body in _ynn_fusions(text).values()
    )
