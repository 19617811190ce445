"""The authors' checkpoint layout: an independent NumPy reference, and a plain-torch model."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import keras_irevnet as kir
from keras_irevnet.convert import read_state_dict
from tests.helpers import once_in, preprocessed_photos, relative_error, tiny_model, to_numpy

# --- an independent NumPy i-RevNet, written from the authors' code, torch-layout weights ---


def np_conv3x3(x, w, stride):
    """NHWC input, (out, in, 3, 3) weight, PyTorch padding=1 on every side."""
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    n, h, wd, _ = x.shape
    oh, ow = h // stride, wd // stride
    out = np.zeros((n, oh, ow, w.shape[0]))
    for kh in range(3):
        for kw in range(3):
            patch = xp[:, kh : kh + stride * oh : stride, kw : kw + stride * ow : stride, :]
            out += np.einsum("nhwc,oc->nhwo", patch, w[:, :, kh, kw])
    return out


def np_bn(x, sd, prefix):
    g, b = sd[f"{prefix}.weight"], sd[f"{prefix}.bias"]
    m, v = sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"]
    return (x - m) / np.sqrt(v + 1e-5) * g + b


def np_psi(x):
    n, h, w, c = x.shape
    out = np.zeros((n, h // 2, w // 2, 4 * c))
    for i in range(h // 2):
        for j in range(w // 2):
            for dh in range(2):
                for dw in range(2):
                    out[:, i, j, (dh * 2 + dw) * c : (dh * 2 + dw + 1) * c] = x[
                        :, 2 * i + dh, 2 * j + dw
                    ]
    return out


def np_bottleneck(x, sd, p, first, stride):
    relu = lambda t: np.maximum(t, 0)  # noqa: E731
    if first:  # 0 conv, 1 BN, 2 ReLU, 3 conv, 4 dropout, 5 BN, 6 ReLU, 7 conv
        h = relu(np_bn(np_conv3x3(x, sd[f"{p}.0.weight"], stride), sd, f"{p}.1"))
        h = relu(np_bn(np_conv3x3(h, sd[f"{p}.3.weight"], 1), sd, f"{p}.5"))
        return np_conv3x3(h, sd[f"{p}.7.weight"], 1)
    h = relu(np_bn(x, sd, f"{p}.0"))
    h = relu(np_bn(np_conv3x3(h, sd[f"{p}.2.weight"], stride), sd, f"{p}.3"))
    h = relu(np_bn(np_conv3x3(h, sd[f"{p}.5.weight"], 1), sd, f"{p}.7"))
    return np_conv3x3(h, sd[f"{p}.9.weight"], 1)


def np_block(x1, x2, sd, i, first, stride, pad):
    if pad:
        x = np.concatenate([x1, x2, np.zeros(x1.shape[:3] + (pad,))], axis=-1)
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    f = np_bottleneck(x2, sd, f"stack.{i}.bottleneck_block", first, stride)
    if stride == 2:
        x1, x2 = np_psi(x1), np_psi(x2)
    return x2, f + x1


def random_state_dict(rng, torch_shapes):
    sd = {}
    for name, shape in torch_shapes.items():
        if name.endswith("running_var"):
            sd[name] = rng.uniform(0.5, 2.0, shape)
        elif name.endswith("num_batches_tracked"):
            sd[name] = np.array(7)
        elif name.endswith(("running_mean", "bias")):
            sd[name] = rng.normal(0, 0.2, shape)
        elif name.endswith("weight") and len(shape) == 1:
            sd[name] = rng.uniform(0.5, 1.5, shape)
        else:
            sd[name] = rng.normal(0, 1.0 / np.sqrt(np.prod(shape[1:])), shape)
    return sd


# Two blocks: the first (no pre-BN) injective 12 -> 16 channels, then a stride-2 block.
SMALL_SHAPES = {
    "stack.0.bottleneck_block.0.weight": (2, 8, 3, 3),
    **{
        f"stack.0.bottleneck_block.{j}.{v}": (2,)
        for j in (1, 5)
        for v in ("weight", "bias", "running_mean", "running_var")
    },
    "stack.0.bottleneck_block.1.num_batches_tracked": (),
    "stack.0.bottleneck_block.5.num_batches_tracked": (),
    "stack.0.bottleneck_block.3.weight": (2, 2, 3, 3),
    "stack.0.bottleneck_block.7.weight": (8, 2, 3, 3),
    **{
        f"stack.1.bottleneck_block.0.{v}": (8,)
        for v in ("weight", "bias", "running_mean", "running_var")
    },
    **{
        f"stack.1.bottleneck_block.{j}.{v}": (8,)
        for j in (3, 7)
        for v in ("weight", "bias", "running_mean", "running_var")
    },
    "stack.1.bottleneck_block.2.weight": (8, 8, 3, 3),
    "stack.1.bottleneck_block.5.weight": (8, 8, 3, 3),
    "stack.1.bottleneck_block.9.weight": (32, 8, 3, 3),
    **{f"bn1.{v}": (64,) for v in ("weight", "bias", "running_mean", "running_var")},
    "linear.weight": (5, 64),
    "linear.bias": (5,),
}


def small_model():
    return tiny_model(input_shape=(16, 16, 3), dtype="float32")


def test_matches_numpy_reference_of_the_blocks():
    rng = np.random.default_rng(0)
    sd = random_state_dict(rng, SMALL_SHAPES)
    model = kir.load_official_weights(small_model(), {f"module.{k}": v for k, v in sd.items()})
    x = preprocessed_photos(16, 2).astype("float64")

    h = np_psi(x)
    x1, x2 = h[..., :6], h[..., 6:]
    x1, x2 = np_block(x1, x2, sd, 0, first=True, stride=1, pad=4)
    x1, x2 = np_block(x1, x2, sd, 1, first=False, stride=2, pad=0)
    phi = np.concatenate([x1, x2], axis=-1)
    pooled = np.maximum(np_bn(phi, sd, "bn1"), 0).mean(axis=(1, 2))
    logits = pooled @ sd["linear.weight"].T + sd["linear.bias"]

    assert relative_error(model.features(x.astype("float32")), phi) <= 1e-5
    assert relative_error(model(x.astype("float32")), logits) <= 1e-5
    assert relative_error(model.inverse(phi.astype("float32")), x) <= 1e-5


# --- the plain-torch reference (benchmarks/torch_irevnet.py), through a real checkpoint -----

torch = pytest.importorskip("torch", reason="torch is the reference implementation")


def torch_reference(config, classes, seed=0):
    from benchmarks.torch_irevnet import TorchIRevNet

    torch.manual_seed(seed)
    net = TorchIRevNet(**config, classes=classes).double()
    with torch.no_grad():  # non-trivial BatchNorm statistics, as a trained model has
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def save_official_checkpoint(net, path):
    state = {f"module.{k}": v.float() for k, v in net.state_dict().items()}
    torch.save(
        {"epoch": 1, "arch": "iRevNet", "state_dict": state, "best_prec1": 0.0, "optimizer": {}},
        path,
    )


def compare_with_reference(model, net, x):
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).astype("float64"))
    with torch.no_grad():
        logits, phi = net(xt)
        back = net.inverse(phi)
    phi_nhwc = phi.numpy().transpose(0, 2, 3, 1)
    assert relative_error(model(x), logits.numpy()) <= 1e-4
    assert relative_error(model.features(x), phi_nhwc) <= 1e-4
    assert (
        relative_error(
            model.inverse(phi_nhwc.astype("float32")), back.numpy().transpose(0, 2, 3, 1)
        )
        <= 1e-4
    )


def test_cifar_checkpoint_reproduces_reference(tmp_path):
    from keras_irevnet.models import PRESETS

    config = dict(PRESETS["cifar"].architecture)
    net = torch_reference(config, classes=10)
    assert len(net.state_dict()) == 974  # the entry count of the authors' CIFAR checkpoint
    path = tmp_path / "cifar.pth.tar"
    save_official_checkpoint(net, path)
    model = kir.load_official_weights(kir.IRevNetCIFAR(classifier_activation=None), str(path))
    compare_with_reference(model, net, preprocessed_photos(32, 4))


def test_imagenet_style_checkpoint_reproduces_reference(tmp_path):
    # The bijective layout (init_ds=2, stride-2 stages) at reduced depth and resolution.
    config = dict(blocks=(2, 2, 1), strides=(2, 2, 2), channels=(24, 96, 384), init_ds=2)
    net = torch_reference(config, classes=7)
    path = tmp_path / "imagenet.pth.tar"
    save_official_checkpoint(net, path)
    model = kir.IRevNet(**config, input_shape=(64, 64, 3), classes=7, classifier_activation=None)
    kir.load_official_weights(model, str(path))
    compare_with_reference(model, net, preprocessed_photos(64, 2))


# --- errors: every entry used, every weight set, nothing assigned on failure ----------------


def _mapping():
    return random_state_dict(np.random.default_rng(1), SMALL_SHAPES)


def _assert_untouched(model, before):
    for w, b in zip(model.weights, before):
        np.testing.assert_array_equal(to_numpy(w), b)


def test_missing_entry_is_named():
    model = small_model()
    before = [to_numpy(w) for w in model.weights]
    sd = _mapping()
    del sd["stack.1.bottleneck_block.5.weight"]
    with pytest.raises(ValueError, match=r"missing entries: 'stack.1.bottleneck_block.5.weight'"):
        kir.load_official_weights(model, sd)
    _assert_untouched(model, before)


def test_unexpected_entry_is_named():
    sd = _mapping()
    sd["stack.2.bottleneck_block.0.weight"] = np.zeros((4, 4, 3, 3))
    with pytest.raises(
        ValueError, match=r"unexpected entries: 'stack.2.bottleneck_block.0.weight'"
    ):
        kir.load_official_weights(small_model(), sd)


def test_misshaped_entry_names_both_shapes():
    model = small_model()
    before = [to_numpy(w) for w in model.weights]
    sd = _mapping()
    sd["linear.weight"] = np.zeros((6, 64))
    with pytest.raises(
        ValueError, match=r"'linear.weight' has shape \(6, 64\) .* has shape \(64, 5\)"
    ):
        kir.load_official_weights(model, sd)
    _assert_untouched(model, before)


def test_head_entries_without_top_hint():
    model = tiny_model(input_shape=(16, 16, 3), include_top=False)
    with pytest.raises(ValueError, match="classifier head: build the model with include_top=True"):
        kir.load_official_weights(model, _mapping())


def test_checkpoint_file_loads_without_unpickling_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": Exception("not a tensor")}, path)
    with pytest.raises(
        ValueError, match=r"(?i)Python objects \(\w*\.?Exception\).*weights_only.*unpickl"
    ):
        read_state_dict(str(path))


@pytest.mark.parametrize("entry", ["stack.0.bottleneck_block.0.weight", "linear.bias"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_refused_before_anything_is_assigned(entry, bad):
    model = small_model()
    before = [to_numpy(w) for w in model.weights]
    sd = _mapping()
    sd[entry] = sd[entry].copy()
    sd[entry].flat[1] = bad
    with pytest.raises(ValueError, match=rf"non-finite values .*: '{entry}' \(1 in all\)"):
        kir.load_official_weights(model, sd)
    _assert_untouched(model, before)


def test_values_that_overflow_the_variable_dtype_are_refused():
    model = small_model()
    sd = _mapping()
    sd["linear.bias"] = np.full(5, 1e300)  # finite in float64, inf in float32
    with pytest.raises(ValueError, match=r"non-finite values .*'linear.bias'"):
        kir.load_official_weights(model, sd)


def test_many_non_finite_entries_listed_with_their_count():
    sd = {name: np.full(np.shape(value), np.nan) for name, value in _mapping().items()}
    with pytest.raises(ValueError, match=r"non-finite values .* and \d+ more \(\d+ in all\)"):
        kir.load_official_weights(small_model(), sd)


def test_last_entry_failing_conversion_assigns_nothing():
    # The last variable of the plan: values used to be converted inside the assignment loop,
    # so every earlier variable was overwritten before this one failed.
    model = small_model()
    before = [to_numpy(w) for w in model.weights]
    sd = _mapping()
    sd["linear.bias"] = np.array(["a", "b", "c", "d", "e"])
    with pytest.raises(ValueError, match=r"not numeric arrays: 'linear.bias' \(<U1\)"):
        kir.load_official_weights(model, sd)
    _assert_untouched(model, before)


def _saved(path, obj):
    torch.save(obj, path)
    return path


def _truncated_checkpoint(path):
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in _mapping().items()}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _pickled_object(path):
    import decimal
    import pickle

    with open(path, "wb") as stream:
        pickle.dump({"state_dict": decimal.Decimal("1.5")}, stream, protocol=2)
    return path


BAD_CHECKPOINTS = {
    "missing": (lambda path: path, r"not found"),
    "empty": (lambda path: (path.write_bytes(b""), path)[1], r"is empty"),
    "truncated": (
        _truncated_checkpoint,
        r"not a PyTorch checkpoint, or a truncated or damaged one",
    ),
    "random bytes": (
        lambda path: (path.write_bytes(np.random.default_rng(0).bytes(4096)), path)[1],
        r"not a PyTorch checkpoint, or a truncated or damaged one",
    ),
    "text": (
        lambda path: (path.write_text("epoch 1: loss 0.3\n"), path)[1],
        r"not a PyTorch checkpoint, or a truncated or damaged one",
    ),
    "pickled object": (
        _pickled_object,
        r"Python objects \(decimal.Decimal\) .*refuses to unpickle",
    ),
    "bare tensor": (lambda path: _saved(path, torch.ones(3)), r"holds a Tensor, not a state dict"),
    "list": (lambda path: _saved(path, [torch.ones(3)]), r"holds a list, not a state dict"),
}


@pytest.mark.parametrize("kind", list(BAD_CHECKPOINTS))
def test_bad_checkpoint_file_is_one_line_value_error_naming_it(tmp_path, kind):
    make, reason = BAD_CHECKPOINTS[kind]
    path = make(tmp_path / "checkpoint.pth.tar")
    model = small_model()
    before = [to_numpy(w) for w in model.weights]
    with pytest.raises(ValueError) as error:
        kir.load_official_weights(model, str(path))
    message = str(error.value)
    assert "\n" not in message and repr(str(path)) in message
    assert re.search(reason, message), message
    assert "expected a PyTorch checkpoint saved with torch.save holding a state dict" in message
    _assert_untouched(model, before)


@once_in("torch", "the program reads checkpoints with torch on every backend")
@pytest.mark.slow
def test_convert_program_reports_bad_checkpoint_in_one_line(tmp_path):
    checkpoint = _truncated_checkpoint(tmp_path / "cut.pth.tar")
    output = tmp_path / "out.weights.h5"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environment = {**os.environ, "PYTHONPATH": root}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "applications.convert",
            f"--official_checkpoint={checkpoint}",
            "--model=cifar",
            f"--output={output}",
        ],
        cwd=root,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert str(checkpoint) in result.stderr and "truncated or damaged" in result.stderr
    assert not output.exists() and not [p for p in os.listdir(tmp_path) if ".partial-" in p]
