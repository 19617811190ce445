"""Shared test utilities: relative errors and real photos."""

import contextlib
import functools

import keras
import numpy as np


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def relative_error(a, b):
    """||a - b|| / ||b||, computed in float64."""
    a = to_numpy(a).astype("float64")
    b = to_numpy(b).astype("float64")
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@functools.lru_cache(maxsize=None)
def _photo_batch(size):
    from skimage import data, transform

    images = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    resized = [
        transform.resize(image, (size, size), anti_aliasing=True, preserve_range=True)
        for image in images
    ]
    return np.stack(resized).astype("float32")


def photos(size, count=4):
    """`count` real RGB photos from scikit-image, resized to size x size, pixels in [0, 255]."""
    return _photo_batch(size)[:count].copy()


def preprocessed_photos(size, count=4, dtype="float32"):
    import keras_irevnet as kir

    return kir.preprocess_input(photos(size, count)).astype(dtype)


def once_in(backend, why):
    """Runs a test in one backend's suite only: it exercises a program or file format whose
    behaviour does not depend on the Keras backend of the test process (`make test` runs the
    suite once per backend; such tests are spread over the three suites)."""
    import pytest

    return pytest.mark.skipif(
        keras.backend.backend() != backend, reason=f"runs once, in the {backend} suite: {why}"
    )


# The tests' tiny i-RevNet: every kind of piece (initial psi, a stride-1 and a stride-2 block,
# the head) in seconds. Logits: a relative error on logits is stricter than on softmax.
TINY = dict(
    blocks=(1, 1),
    strides=(1, 2),
    channels=(8, 32),
    init_ds=2,
    mult=4,
    input_shape=(32, 32, 3),
    classes=5,
    classifier_activation=None,
)


def tiny_model(seed=0, **overrides):
    """The tests' one small-model factory: `TINY` with `overrides`, seeded weights."""
    import keras_irevnet as kir

    keras.utils.set_random_seed(seed)
    return kir.IRevNet(**{**TINY, **overrides})


def compiled_by_dynamo(*functions):
    """The qualified names of those of `functions` that torch.compile's Dynamo compiled a
    frame of in this process (rather than tracing them inside their callers, or leaving them
    eager)."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    return [f.__qualname__ for f in functions if _debug_get_cache_entry_list(f)]


def narrow_stack(blocks, seed=0, **overrides):
    """One stage of `blocks` stride-1 blocks, 16 channels, on 16x16 images, without a head
    unless `overrides` asks for one: what the tests that vary depth build."""
    overrides = {"include_top": False, **overrides}
    return tiny_model(
        seed,
        blocks=(blocks,),
        strides=(1,),
        channels=(16,),
        input_shape=(16, 16, 3),
        **overrides,
    )


def jax_training_loss(model):
    """JAX: `(loss, trainable)`: `loss(trainable, x)` is sum(y ** 2), y = the model's
    training-mode output on `x` with the trainable weights' values `trainable` (the model's
    current ones given with it), its state left untouched."""
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def loss(trainable, x):
        y, _ = model.stateless_call(trainable, non_trainable, x, training=True)
        return (y * y).sum()

    return loss, trainable


def compiled_jax_gradient(model, batch):
    """JAX: the compiled gradient w.r.t. the trainable weights of `jax_training_loss` on
    `batch` 16x16 images of ones (an XLA executable to inspect), compiled with the options
    the models' own steps get."""
    import jax

    from keras_irevnet.models.xla_cpu_options import jax_compiler_options

    loss, trainable = jax_training_loss(model)
    x = jax.numpy.ones((batch, 16, 16, 3))
    compiled = jax.jit(jax.grad(loss), compiler_options=jax_compiler_options())
    return compiled.lower(trainable, x).compile()


def no_autograd():
    """torch's `no_grad()` on torch (Keras' predict runs so); elsewhere nothing."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


@contextlib.contextmanager
def float64_mode():
    """JAX computes float64 only in its 64-bit mode (float32 otherwise); the other backends
    always do. Turns the mode on for the block and restores it."""
    if keras.backend.backend() != "jax":
        yield
        return
    import jax

    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


# Prepended to every child script: refuses to import the named packages, so the child proves
# that the artifact needs none of them. TensorFlow itself looks keras up while importing, so
# the modules are refused when loaded (not hidden from importlib.util.find_spec).
IMPORT_BLOCKER = """
import importlib.abc, importlib.machinery, sys
BLOCKED = {blocked!r}
class _Refuse(importlib.abc.Loader):
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        raise ImportError("not importable in this process: " + module.__name__)
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            return importlib.machinery.ModuleSpec(name, _Refuse())
sys.meta_path.insert(0, _Block())
"""


def graph_nodes(function, *args):
    """Every node of the TensorFlow graph `function` traces for `args`, and of the functions
    it calls."""
    graph_def = function.get_concrete_function(*args).graph.as_graph_def()
    nodes = list(graph_def.node)
    for library_function in graph_def.library.function:
        nodes.extend(library_function.node_def)
    return nodes
