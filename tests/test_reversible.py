"""Reversible (memory-efficient) backprop: same gradients, same state, same training.

The tests compare `memory_efficient=True` with plain autodiff (`memory_efficient=False`) on
the same weights. The tiny model has all three kinds of block: stage 0 starts with an
injective block (3 channels padded to 16) followed by a stride-1 block, stage 1 starts with a
stride-2 block. Errors are relative, per tensor: ||me - plain|| <= tol * ||plain||.
"""

import collections
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_irevnet as kir
from keras_irevnet.reversible import reversible_blocks
from tests import helpers
from tests.helpers import relative_error, to_numpy

BACKEND = keras.backend.backend()
TOLERANCE = {"float32": 1e-5, "float64": 1e-10}
BATCH, CLASSES = 4, 5


def tiny_model(memory_efficient, dtype="float32", dropout=0.0, config="injective", **kwargs):
    """Same seed, same weights, whatever `memory_efficient` is."""
    stages = {
        # injective block, stride-1 block | stride-2 block, stride-1 block
        "injective": dict(blocks=(2, 2), strides=(1, 2), channels=(8, 32), init_ds=0),
        # psi(2) first, then a stride-2 block and a stride-1 block (all bijective)
        "bijective": dict(blocks=(1, 1), strides=(2, 1), channels=(24, 24), init_ds=2),
    }[config]
    return helpers.tiny_model(
        **stages,
        input_shape=(8, 8, 3),
        dropout=dropout,
        memory_efficient=memory_efficient,
        dtype=dtype,
        **kwargs,
    )


def inputs(dtype="float32", batch=BATCH):
    return np.random.RandomState(0).randn(batch, 8, 8, 3).astype(dtype)


def cotangent(dtype="float32", batch=BATCH):
    return np.random.RandomState(1).randn(batch, CLASSES).astype(dtype)


def gradients(model, x):
    """Gradients of sum(model(x, training=True) * r) w.r.t. [x] + trainable variables.

    One training-mode call, so the model's BatchNorm moving statistics are updated once.
    """
    r = cotangent(x.dtype, len(x))
    # Keras' torch dropout draws an unseeded layer's masks from torch's global generator:
    # start both modes' steps from the same global state (TF and JAX use per-layer seeds).
    keras.utils.set_random_seed(2)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.cast(model(x, training=True), x.dtype)
            loss = tf.reduce_sum(y * r)
        grads = tape.gradient(loss, [x] + model.trainable_variables)
    elif BACKEND == "jax":
        import jax

        def loss_fn(x, trainable, non_trainable):
            y, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
            return (y.astype(x.dtype) * r).sum(), non_trainable

        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
        if x.dtype != "float64":
            # Compiled: much faster here than op-by-op. float64 stays eager: under jit,
            # XLA's float64 results move by ~1e-6 relative between two compilations of the
            # same plain model, which would hide a 1e-10 comparison.
            grad_fn = jax.jit(grad_fn)
        (_, non_trainable), (grad_x, grad_w) = grad_fn(x, trainable, non_trainable)
        for variable, value in zip(model.non_trainable_variables, non_trainable):
            variable.assign(value)
        grads = [grad_x] + list(grad_w)
    else:
        import torch

        x = torch.tensor(x, requires_grad=True)
        y = model(x, training=True)
        (y.to(x.dtype) * torch.tensor(r)).sum().backward()
        grads = [x.grad] + [v.value.grad for v in model.trainable_variables]
    assert all(g is not None for g in grads), "a weight got no gradient"
    return [to_numpy(g) for g in grads]


def _torch_rng_state():
    if BACKEND != "torch":
        return np.zeros(0)
    import torch

    return torch.get_rng_state().numpy()


def assert_all_close(got, expected, tol, names):
    assert len(got) == len(expected)
    for name, a, b in zip(names, got, expected):
        a, b = np.asarray(a, "float64"), np.asarray(b, "float64")
        error = np.linalg.norm(a - b)
        assert error <= tol * np.linalg.norm(b), (
            f"{name}: relative error {error / max(np.linalg.norm(b), 1e-300):.3g} > {tol:g}"
        )


def weight_names(model):
    return ["input"] + [v.path for v in model.trainable_variables]


# --- Exactness of gradients and state ---


@pytest.mark.parametrize(
    "config, dtype",
    [("injective", "float32"), ("injective", "float64"), ("bijective", "float32")],
)
def test_gradients_and_moving_statistics_match_plain_autodiff(config, dtype, float64_enabled):
    # The injective config has all three kinds of block; the bijective one adds psi(2) and a
    # stride-2 first block. dropout > 0: the recompute must replay the forward's masks, or
    # the gradients differ at the 1e-1 level. BatchNorm in training mode: the moving
    # statistics after the step must equal the plain step's, i.e. be updated once (a second
    # update by the recompute, momentum 0.9, would leave 0.81 of the old value, not 0.9).
    plain = tiny_model(False, dtype, dropout=0.2, config=config)
    efficient = tiny_model(True, dtype, dropout=0.2, config=config)
    x = inputs(dtype)
    expected = gradients(plain, x)
    plain_rng = _torch_rng_state()
    got = gradients(efficient, x)
    # On torch the recompute replays the global generator and restores it: the step
    # consumes exactly the random numbers of the plain step.
    assert np.array_equal(_torch_rng_state(), plain_rng)
    assert_all_close(got, expected, TOLERANCE[dtype], weight_names(plain))
    # (A weight that the backend's custom gradient does not reach, the torch trap of Keras
    # variables passed to an autograd function, gets None, which `gradients` rejects. At
    # this initialisation the injective first block's F is dead in both modes, its input
    # being all zero padding and its ReLUs at beta = 0: exactly zero gradients, compared
    # exactly.)
    assert_all_close(
        [to_numpy(v) for v in efficient.non_trainable_weights],
        [to_numpy(v) for v in plain.non_trainable_weights],
        TOLERANCE[dtype],
        [v.path for v in plain.non_trainable_weights],
    )
    # The replay rewinds the dropout seeds for the recompute only: after the step, the
    # random state has advanced exactly as in the plain step (the next step draws new masks).
    assert_all_close(
        [to_numpy(v) for v in efficient.non_trainable_variables],
        [to_numpy(v) for v in plain.non_trainable_variables],
        TOLERANCE[dtype],
        [v.path for v in plain.non_trainable_variables],
    )
    initial = tiny_model(False, dtype, dropout=0.2, config=config)
    seeds = [v for v in plain.non_trainable_variables if "seed" in v.path]
    initial_seeds = [v for v in initial.non_trainable_variables if "seed" in v.path]
    if BACKEND != "torch":  # torch draws unseeded masks from its global generator instead
        assert seeds and all(
            not np.array_equal(to_numpy(a), to_numpy(b)) for a, b in zip(seeds, initial_seeds)
        )
    moved = [
        v.path
        for v, w in zip(plain.non_trainable_weights, initial.non_trainable_weights)
        if not np.array_equal(to_numpy(v), to_numpy(w))
    ]
    # (Every moving variance moves; a moving mean of the dead first block stays at 0.)
    variances = [v.path for v in plain.non_trainable_weights if "variance" in v.path]
    assert set(variances) <= set(moved), "moving statistics did not move"


# --- Training: fit, regularisers, weight decay, compilation ---


def _fit(memory_efficient, jit_compile, steps=3):
    # XLA uses the smaller bijective model: its compile time dominates there.
    config = "bijective" if jit_compile is True else "injective"
    model = tiny_model(memory_efficient, dropout=0.1, config=config)
    # An L2 regulariser on every convolution kernel (a loss term computed from the weights)
    # and decoupled weight decay in the optimizer: both must act identically.
    for v in model.trainable_variables:
        if v.path.endswith("kernel") and "block_stack" in v.path:
            v.regularizer = keras.regularizers.L2(5e-4)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=5e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    x = inputs(batch=BATCH * steps)
    y = np.arange(len(x)) % CLASSES
    keras.utils.set_random_seed(1)  # torch's unseeded dropout draws from the global RNG
    history = model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    return model, history.history["loss"][0]


class _CouplingChain(keras.layers.Layer):
    """A chain of plain `AdditiveCoupling`s, run by reversible backprop or by plain calls."""

    def __init__(self, memory_efficient, **kwargs):
        super().__init__(autocast=False, **kwargs)
        self.memory_efficient = memory_efficient
        # 4 channels in: halves of 2, 2 -> (stride 2) 8, 8 -> 8, 8.
        self.couplings = [
            kir.layers.AdditiveCoupling(_residual(filters, strides), strides=strides, name=f"c{i}")
            for i, (filters, strides) in enumerate(((2, 1), (8, 2), (8, 1)))
        ]

    def build(self, input_shape):
        shape = kir.layers.channels.split_shape(input_shape)
        for coupling in self.couplings:
            coupling.build(shape)
            shape = coupling.compute_output_shape(shape)

    def call(self, inputs, training=None):
        pair = kir.layers.split_channels(inputs)
        if self.memory_efficient and training:
            pair = reversible_blocks(self.couplings, pair, training=training)
        else:
            for coupling in self.couplings:
                pair = coupling(pair, training=training)
        return kir.layers.merge_channels(*pair)


def _residual(filters, strides):
    """F that is not the i-RevNet bottleneck: Conv -> BatchNorm -> Dropout -> tanh."""
    return keras.Sequential(
        [
            keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False),
            keras.layers.BatchNormalization(momentum=0.5),
            keras.layers.Dropout(0.2),
            keras.layers.Activation("tanh"),
        ]
    )


def _coupling_chain_model(memory_efficient):
    keras.utils.set_random_seed(0)
    images = keras.Input((8, 8, 4))
    features = _CouplingChain(memory_efficient)(images)
    outputs = keras.layers.Dense(CLASSES)(keras.layers.GlobalAveragePooling2D()(features))
    return keras.Model(images, outputs)


def test_any_additive_coupling_runs_reversibly():
    """reversible/ needs only the coupling contract: a chain whose F is a Sequential of Keras
    layers trains with the gradients, moving statistics and dropout masks of autodiff."""
    plain = _coupling_chain_model(False)
    efficient = _coupling_chain_model(True)
    efficient.set_weights(plain.get_weights())
    x = np.random.RandomState(0).randn(BATCH, 8, 8, 4).astype("float32")
    expected = gradients(plain, x)
    got = gradients(efficient, x)
    assert_all_close(got, expected, TOLERANCE["float32"], weight_names(plain))
    for a, b in zip(efficient.non_trainable_variables, plain.non_trainable_variables):
        if keras.backend.is_float_dtype(a.dtype):
            np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-5, atol=1e-6)


def test_fit_agrees_with_plain_training():
    # Keras' default compilation: tf.function on TensorFlow, jax.jit on JAX (the JAX
    # trainer maps every Keras variable to a traced value, so the custom_vjp must take the
    # weights as inputs), eager on torch.
    _check_fit("auto")


def test_fit_with_xla_on_tensorflow():
    if BACKEND != "tensorflow":
        pytest.skip("jit_compile=True is XLA on TensorFlow; JAX's fit is jitted above already")
    _check_fit(True)


def _check_fit(jit_compile):
    plain, plain_loss = _fit(False, jit_compile)
    efficient, efficient_loss = _fit(True, jit_compile)
    assert abs(efficient_loss - plain_loss) <= 1e-4 * abs(plain_loss)
    # Every weight, the moving statistics too, after 3 SGD steps from the same weights.
    assert_all_close(
        [to_numpy(v) for v in efficient.weights],
        [to_numpy(v) for v in plain.weights],
        1e-4,
        [v.path for v in plain.weights],
    )
    initial = tiny_model(False, config="bijective" if jit_compile is True else "injective")
    assert not np.allclose(to_numpy(plain.weights[-1]), to_numpy(initial.weights[-1]))


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from tests.test_reversible import BATCH, CLASSES, inputs, tiny_model

    def fit(memory_efficient):
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            model = tiny_model(memory_efficient, dropout=0.1)
            model.compile(
                optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
        x = inputs(batch=2 * BATCH * 2)
        y = np.arange(len(x)) % CLASSES
        model.fit(x, y, batch_size=2 * BATCH, epochs=1, shuffle=False, verbose=0)
        return [np.asarray(v.numpy() if hasattr(v, "numpy") else v) for v in model.weights]

    plain, efficient = fit(False), fit(True)
    worst = max(
        np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30) for a, b in zip(efficient, plain)
    )
    moved = max(
        np.linalg.norm(a - b.numpy()) for a, b in zip(plain, tiny_model(False).weights)
    )
    print("WORST", worst, "MOVED", moved)
    assert worst < 1e-4 and moved > 0, worst
    """
)


def test_mirrored_strategy_on_two_cpu_devices():
    if BACKEND != "tensorflow":
        pytest.skip("tf.distribute.MirroredStrategy is TensorFlow's")
    # A fresh process: logical devices must be configured before TensorFlow starts.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT],
        cwd=root,
        env={**os.environ, "KERAS_BACKEND": "tensorflow"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "WORST" in result.stdout


# --- Mixed precision ---

# Mixed precision. F runs in float16 / bfloat16, unit roundoff u = 2^-11 ~ 4.9e-4 / 2^-8 ~
# 3.9e-3, so plain mixed-precision autodiff is itself far from the float32 gradients. The two
# modes differ in where values are rounded to 16 bits: the reversible path keeps the halves
# (and so the reconstruction) in float32 and rounds only F's input and output; plain
# autodiff rounds the halves too. Single tensors are a poor measure: some gradients here are
# noise in both modes (one BatchNorm gamma is 1.2x its own norm away from float32 with plain
# bfloat16 on torch). So the mean over tensors of the relative error must be no worse than
# plain mixed precision's, plus a few u for the different rounding. Measured (mean relative
# error, reversible vs plain): float16 0.025 vs 0.023 (TF), 0.0021 vs 0.0021 (torch), 0.034
# vs 0.034 (JAX); bfloat16 0.14 vs 0.14 (TF), 0.17 vs 0.18 (torch), 0.11 vs 0.12 (JAX).
UNIT_ROUNDOFF = {"mixed_float16": 2.0**-11, "mixed_bfloat16": 2.0**-8}


@pytest.mark.parametrize("policy", sorted(UNIT_ROUNDOFF))
def test_mixed_precision_gradients(policy):
    x = inputs()
    exact = gradients(tiny_model(False, "float32"), x)
    plain = gradients(tiny_model(False, policy), x)
    efficient = gradients(tiny_model(True, policy), x)
    used = [i for i, e in enumerate(exact) if np.linalg.norm(e) > 0]
    mean_error = lambda a, b: np.mean([relative_error(a[i], b[i]) for i in used])  # noqa: E731
    vs_plain, vs_exact, plain_vs_exact = (
        mean_error(efficient, plain),
        mean_error(efficient, exact),
        mean_error(plain, exact),
    )
    u = UNIT_ROUNDOFF[policy]
    print(
        f"{policy}: mean relative error, reversible vs plain {vs_plain:.3g}; vs float32: "
        f"reversible {vs_exact:.3g}, plain {plain_vs_exact:.3g}"
    )
    assert vs_exact <= plain_vs_exact + 4 * u


def test_mixed_precision_carries_halves_in_float32():
    model = tiny_model(True, "mixed_float16")
    block = model.get_layer("block_stack").blocks[1]
    x = keras.ops.convert_to_tensor(np.random.RandomState(0).randn(2, 8, 8, 8), "float32")
    halves = block.coupling_forward((x, x), training=True)
    assert [keras.backend.standardize_dtype(h.dtype) for h in halves] == ["float32"] * 2
    # The stack still returns its compute dtype, as the plain path does.
    phi = model.get_layer("block_stack")(keras.ops.convert_to_tensor(inputs()), training=True)
    assert keras.backend.standardize_dtype(phi.dtype) == "float16"


# --- Inference mode, memory, API ---


def test_inference_mode_takes_the_plain_path():
    # features() in inference mode must stay usable by forward-mode autodiff (analyses).
    model = tiny_model(True)
    z = model.features(inputs())
    np.testing.assert_allclose(
        to_numpy(z), to_numpy(tiny_model(False).features(inputs())), rtol=0, atol=0
    )
    from keras_irevnet.analysis.autodiff import jvp

    _, jz = jvp(lambda x: model.features(x), inputs(), np.ones_like(inputs()))
    assert np.isfinite(to_numpy(jz)).all()


def test_jax_compiled_step_memory_is_flat_in_depth():
    if BACKEND != "jax":
        pytest.skip("XLA's memory analysis of a compiled step is JAX's")

    def temp_bytes(memory_efficient, blocks):
        model = helpers.narrow_stack(blocks, memory_efficient=memory_efficient, dropout=0.1)
        compiled = helpers.compiled_jax_gradient(model, batch=16)
        return compiled.memory_analysis().temp_size_in_bytes

    shallow, deep, plain_deep = temp_bytes(True, 8), temp_bytes(True, 32), temp_bytes(False, 32)
    # Measured: 887,384 and 930,392 bytes at 8 and 32 blocks, plain autodiff 6.79 MB
    # (1/7.3). With Keras' JAX dropout, 915,736 and 955,736 bytes and 7.70 MB plain (1/8.1):
    # plain autodiff kept each mask's 32 random bits per element besides the mask, which
    # made the ratio look better (this bound was 1/8 then; without dropout the ratio is
    # 913,872 against 6.65 MB, 1/7.3). With Keras' BatchNorm instead of the JAX kernel,
    # 741,528 and 752,280 bytes: the kernel stores each BatchNorm's output once, which on
    # this narrow stack adds to the working set of a block (on the CIFAR model at 54 blocks,
    # 0.089 of plain: benchmarks.memory). Before each block's recompute waited for its
    # output's gradients, XLA merged the first blocks' recomputes with their forward
    # computations and kept the results to the end: 1,059,520 bytes at 32 blocks (above
    # this bound). Before each block's dropout seeds were tied to its input, XLA drew every
    # mask at the start of the step and kept it (growth in depth).
    assert deep <= 1.05 * shallow, (shallow, deep)
    assert deep < plain_deep / 7, (deep, plain_deep)


def test_torch_compile_runs_the_chain_eagerly_with_the_same_gradients():
    if BACKEND != "torch":
        pytest.skip("torch.compile is torch's")
    import torch

    from keras_irevnet.layers.irevnet_block import IRevNetBlock
    from keras_irevnet.reversible import _torch, _walk

    # Dynamo cannot capture the chain (torch's RNG state, torch.autograd.grad in backward);
    # left to try, it compiled the chain's pieces frame by frame (a two-block model's
    # `fit(jit_compile=True)` compiled 2.5 times as long), and Inductor drew the compiled
    # forward's dropout masks from its own generator, which the recompute cannot replay (these
    # input gradients were 39 % off). Inside a compiled function the chain runs eagerly,
    # forward and backward, with the gradients it has outside one.
    keras.utils.set_random_seed(0)
    blocks = [IRevNetBlock(8, dropout=0.2, name=f"block{i}") for i in range(2)]
    halves = [np.random.RandomState(i).randn(BATCH, 4, 4, 8).astype("float32") for i in (0, 1)]
    for block in blocks:
        block(tuple(keras.ops.convert_to_tensor(h) for h in halves))
    variables = [v for block in blocks for v in block.trainable_variables]
    weights = [v.value for v in variables]

    def chain(x1, x2):
        return reversible_blocks(blocks, (x1, x2), training=True)

    def gradients(function):
        keras.utils.set_random_seed(2)  # the same dropout masks from torch's generator
        x1, x2 = (torch.tensor(h, requires_grad=True) for h in halves)
        y1, y2 = function(x1, x2)
        (y1 * torch.tensor(halves[1]) + y2 * torch.tensor(halves[0])).sum().backward()
        grads = [to_numpy(g) for g in [x1.grad, x2.grad] + [w.grad for w in weights]]
        for w in weights:
            w.grad = None
        return grads

    eager, compiled = gradients(chain), gradients(torch.compile(chain))
    assert_all_close(compiled, eager, 1e-6, ["x1", "x2"] + [v.path for v in variables])
    pieces = [_walk.forward, _walk.backward, _torch._Chain.before_block, _torch._Chain.residual_vjp]
    assert helpers.compiled_by_dynamo(*pieces) == []


def test_torch_saves_only_the_output_for_backward():
    if BACKEND != "torch":
        pytest.skip("torch.autograd.graph.saved_tensors_hooks is torch's")
    import torch

    def saved_bytes(memory_efficient):
        model = helpers.narrow_stack(8, memory_efficient=memory_efficient)
        model(inputs()[:1].repeat(2, 0).repeat(2, 1).repeat(2, 2))  # build
        total = []

        def pack(t):
            if not isinstance(t, torch.nn.Parameter):
                total.append(t.numel() * t.element_size())
            return t

        x = torch.ones((16, 16, 16, 3))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = model(x, training=True)
        (y * y).sum().backward()
        return sum(total)

    plain, efficient = saved_bytes(False), saved_bytes(True)
    # The stack's output pair, in float32: 16 x 8 x 8 x (16 + 16) x 4 bytes. (The one pair
    # stored after the injective first block is kept outside autograd's saved tensors, so
    # that the walk can release it: see the next test.) Plain autodiff: 22x that at 8 blocks.
    output = 16 * 8 * 8 * 32 * 4
    assert efficient <= output, (efficient, output)
    assert plain > 16 * efficient, (efficient, plain)


def test_torch_recompute_takes_the_forward_batch_statistics():
    # The recompute of F sees the inputs the forward pass gave each BatchNorm, so it
    # normalises with the batch statistics kept from the forward pass: torch's training-mode
    # kernel runs as often as in a plain step, not once more per block. (That its gradients
    # are still training mode's, through the batch statistics, is the exactness test above.)
    if BACKEND != "torch":
        pytest.skip("counts torch's BatchNorm kernel calls")
    import torch

    def kernel_calls(memory_efficient):
        model = tiny_model(memory_efficient, dropout=0.2)
        x = torch.tensor(inputs())
        model(x, training=True)
        with torch.profiler.profile() as profile:
            y = model(x, training=True)
            (y * y).sum().backward()
        return sum(e.count for e in profile.key_averages() if e.key == "aten::native_batch_norm")

    plain, efficient = kernel_calls(False), kernel_calls(True)
    assert plain >= 6, plain  # two BatchNorms per block or more, and the head's
    assert efficient == plain, (efficient, plain)


def test_tensorflow_recompute_takes_the_forward_batch_statistics():
    # As on torch: the recompute of F normalises with the batch statistics of the forward
    # pass, in one pass of TensorFlow's inference kernel, so the step's graph holds as many
    # training-mode BatchNorms (which compute the statistics) as a plain step's, and one
    # inference-mode BatchNorm per recomputed call. (Its gradients are still training
    # mode's: the exactness test above.)
    if BACKEND != "tensorflow":
        pytest.skip("counts the operations of TensorFlow's graph")
    import tensorflow as tf

    def batch_norms(memory_efficient):
        model = tiny_model(memory_efficient, dropout=0.2)
        weights = [v.value for v in model.trainable_variables]

        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(model(x, training=True) ** 2)
            return tape.gradient(loss, weights)

        nodes = helpers.graph_nodes(step, tf.constant(inputs()))
        return collections.Counter(
            (n.op, n.attr["is_training"].b) for n in nodes if n.op.startswith("FusedBatchNorm")
        )

    plain, efficient = batch_norms(False), batch_norms(True)
    training = ("FusedBatchNormV3", True)
    assert plain[training] >= 6, plain  # two BatchNorms per block or more, and the head's
    assert efficient[training] == plain[training], (efficient, plain)
    # Every BatchNorm of the blocks, replayed: all but the head's.
    assert efficient[("FusedBatchNormV3", False)] == plain[training] - 1, (efficient, plain)
    assert plain[("FusedBatchNormV3", False)] == 0, plain


def _dropout_classifier(blocks, memory_efficient):
    """The narrow stack with dropout and a 10-class head: what the step-memory tests train."""
    return helpers.narrow_stack(
        blocks,
        include_top=True,
        classes=10,
        classifier_activation="softmax",
        memory_efficient=memory_efficient,
        dropout=0.1,
    )


def _classifier_batch():
    return np.ones((64, 16, 16, 3), "float32"), np.arange(64) % 10


def test_torch_step_memory_is_flat_in_depth():
    if BACKEND != "torch":
        pytest.skip("measured with torch's profiler")
    from benchmarks.allocations import torch_step_bytes

    def activation_bytes(memory_efficient, blocks):
        model = _dropout_classifier(blocks, memory_efficient)
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        x, y = _classifier_batch()
        model.train_on_batch(x, y)
        measured = torch_step_bytes(lambda: model.train_on_batch(x, y))
        # What the step leaves allocated (weight gradients) grows with the weights.
        return measured["peak_tensor_bytes"] - measured["left_allocated_bytes"]

    shallow, deep = activation_bytes(True, 4), activation_bytes(True, 16)
    plain_deep = activation_bytes(False, 16)
    # What does grow: torch's RNG state as each block started (5 KB per block, to replay
    # its dropout mask), 1-2 % here.
    assert deep <= 1.05 * shallow, (shallow, deep)
    assert deep < plain_deep / 3, (deep, plain_deep)


def test_tensorflow_gradient_memory_is_flat_in_depth():
    if BACKEND != "tensorflow":
        pytest.skip("measured with TensorFlow's allocator statistics")
    from benchmarks.allocations import (
        tensorflow_loss_gradient,
        tensorflow_step_bytes,
        weight_gradient_bytes,
    )

    def activation_bytes(memory_efficient, blocks):
        model = _dropout_classifier(blocks, memory_efficient)
        gradient = tensorflow_loss_gradient(model, keras.losses.SparseCategoricalCrossentropy())
        x, y = _classifier_batch()
        gradient(x, y)
        # The least of five calls: TensorFlow runs independent operations in no fixed
        # order, and in some calls one more buffer (here 256 KB) is alive at the peak.
        peak = min(
            tensorflow_step_bytes(lambda: gradient(x, y))["peak_tensor_bytes"] for _ in range(5)
        )
        return peak - weight_gradient_bytes(model)

    shallow, deep = activation_bytes(True, 4), activation_bytes(True, 16)
    plain_shallow, plain_deep = activation_bytes(False, 4), activation_bytes(False, 16)
    # Measured with oneDNN (TensorFlow's default on Intel CPUs): 2,860,632 and 2,796,120
    # bytes at 4 and 16 blocks; plain autodiff 3.4 and 9.6 MB (519 KB more per block).
    # Without it (AMD's CPUs; BFC allocator), with Eigen's convolution gradients (as
    # keras_irevnet/layers/tensorflow_kernels.py took them before it took oneDNN's kernels
    # there): 3.46 and 3.57 MB, plain 4.6 and 14.6 MB; with oneDNN's kernels there and the
    # backward walk one block behind (_one_block_behind) 3.86 and 3.85 MB, plain 4.9 and
    # 14.5 MB. (TensorFlow's default im2col
    # gradients there held a scratch working set of about 67 MB at the peak of every step,
    # in both modes.) TensorFlow's executor order is not fixed: on a 2-core CI machine all
    # five calls at 16 blocks once held one more 256 KB buffer at the peak (3,058,264
    # bytes, 1.07x). So flat means what the speed-and-memory targets say (deeper within
    # 1.2x), the growth per added block stays under a tenth of plain autodiff's, 16 blocks
    # hold under a third of what plain autodiff's 16 hold, and of what plain autodiff's 16
    # blocks hold (its growth per block, 16 times) the memory-efficient step saves at least
    # two thirds (oneDNN 6.8 of 8.3 MB, Eigen 11.0 of 13.3 MB).
    assert deep <= 1.2 * shallow, (shallow, deep)
    assert deep - shallow < (plain_deep - plain_shallow) / 10, (shallow, deep, plain_deep)
    assert deep < plain_deep / 3, (deep, plain_deep)
    plain_blocks = 16 * (plain_deep - plain_shallow) / 12
    assert plain_deep - deep >= 2 / 3 * plain_blocks, (deep, plain_deep, plain_blocks)


def _tensorflow_recompute_draws(blocks):
    """Per dropout draw (stateless_dropout's uniform draw, one per dropout call) of a
    memory-efficient loss gradient's traced graph, the op types among the ops it waits
    for: each op's own type, or for a function call (tensorflow_kernels' convolutions)
    those its function holds."""
    import tensorflow as tf

    from benchmarks.allocations import tensorflow_loss_gradient

    model = _dropout_classifier(blocks, memory_efficient=True)
    gradient = tensorflow_loss_gradient(model, keras.losses.SparseCategoricalCrossentropy())
    x, y = _classifier_batch()
    graph = gradient.get_concrete_function(tf.constant(x), tf.constant(y)).graph
    function_ops = {
        function.signature.name: [node.op for node in function.node_def]
        for function in graph.as_graph_def().library.function
    }

    def op_types(op):
        if op.type in ("PartitionedCall", "StatefulPartitionedCall"):
            return function_ops[op.get_attr("f").name]
        return [op.type]

    def awaited(op):
        seen, stack, types = {op.name}, [op], []
        while stack:
            current = stack.pop()
            for parent in [t.op for t in current.inputs] + list(current.control_inputs):
                if parent.name not in seen:
                    seen.add(parent.name)
                    stack.append(parent)
                    types.extend(op_types(parent))
        return types

    draws = [op for op in graph.get_operations() if op.type.startswith("StatelessRandomUniform")]
    assert len(draws) == 2 * blocks, [op.type for op in draws]
    return [awaited(op) for op in draws]


def test_tensorflow_recompute_masks_wait_for_their_block():
    # A recompute's dropout mask depends only on the seeds saved before the forward pass;
    # untied, TensorFlow drew every block's as soon as the backward pass began and held each
    # until the walk reached its block (a mask per block: 13 MiB at 54 CIFAR blocks, batch
    # 64). Each block's seeds now wait for its reconstructed input, which convolutions
    # compute: in the traced step, the forward's masks follow from the seeds alone, the
    # recomputes' from a convolution (TensorFlow's op, or oneDNN's or Eigen's in a function
    # call: tensorflow_kernels).
    if BACKEND != "tensorflow":
        pytest.skip("TensorFlow's graph")
    blocks = 4
    draws = _tensorflow_recompute_draws(blocks)
    tied = [any(t.endswith("Conv2D") for t in types) for types in draws]
    # Half of them, the recomputes' (each block's reconstructed input comes from its
    # output through the next block's F, or from the stored input after the injective
    # block, which the forward's convolutions computed).
    assert sum(tied) == blocks, tied


def test_tensorflow_recompute_overlaps_the_next_blocks_gradients():
    # The backward walk holds each block's reconstructed input back until the block after
    # it has all its gradients, not its own block: the recompute of a block's F then runs
    # beside the gradients of the block walked just before it (two blocks in flight, both
    # cores busy), while memory stays flat in depth (the memory tests). In the traced step:
    # the first two recomputes wait for no gradient; each later one for more than the one
    # before (a whole block's more).
    if BACKEND != "tensorflow":
        pytest.skip("TensorFlow's graph")
    blocks = 4
    waited = sorted(
        sum(t.endswith("Conv2DBackpropInput") for t in types)
        for types in _tensorflow_recompute_draws(blocks)
        if any(t.endswith("Conv2D") for t in types)
    )
    assert len(waited) == blocks, waited
    assert waited[0] == waited[1] == 0, waited
    assert all(later > earlier for earlier, later in zip(waited[1:], waited[2:])), waited


def test_memory_efficient_is_off_by_default():
    # README, "Memory-efficient training": the plain step is the faster one.
    import inspect

    for constructor in (kir.IRevNet, kir.IRevNetCIFAR, kir.IRevNetBijective, kir.IRevNetInjective):
        default = inspect.signature(constructor).parameters["memory_efficient"].default
        assert default is False, constructor.__name__
    assert not kir.IRevNet.from_preset("tiny").memory_efficient


def test_config_round_trip_keeps_memory_efficient():
    model = tiny_model(True)
    clone = kir.IRevNet.from_config(model.get_config())
    assert clone.memory_efficient and clone.get_layer("block_stack").memory_efficient
    stack = model.get_layer("block_stack")
    assert kir.BlockStack.from_config(stack.get_config()).memory_efficient
    block = stack.blocks[0]
    assert type(block).from_config(block.get_config()).get_config() == block.get_config()


def test_block_inverse_unchanged_for_inference():
    model = tiny_model(True)
    z = model.features(inputs())
    assert relative_error(model.inverse(z), inputs()) < 1e-5


def test_errors_are_clear():
    from keras_irevnet.layers.irevnet_block import IRevNetBlock

    block = IRevNetBlock(8)
    x = keras.ops.zeros((1, 4, 4, 8))
    with pytest.raises(ValueError, match="must be built"):
        reversible_blocks([block], (x, x))
    block((x, x))
    block.bottleneck.conv1.activity_regularizer = keras.regularizers.L2(1e-3)
    with pytest.raises(ValueError, match="activity regulariser"):
        reversible_blocks([block], (x, x))
