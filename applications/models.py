"""Which i-RevNet a program works on: the preset flags and the model sources all programs share.

`--model` takes the presets of `keras_irevnet.models.PRESETS` in every program, and
`--model_config` overrides their arguments. A model comes from a `.keras` file
(`--model_path`), a `.weights.h5` file with `--model`, the authors' PyTorch checkpoint with
`--model` (`--official_checkpoint`), or published weights (`--weights=imagenet`).
"""

import json
import os

from absl import flags


def define_model_flags():
    """The flags that pick an architecture (shared with applications/export.py)."""
    from keras_irevnet.models import PRESETS

    flags.DEFINE_enum(
        "model",
        None,
        list(PRESETS),
        "The i-RevNet preset (keras_irevnet.models.PRESETS, as applications.train's --model): "
        + "; ".join(f"{name}: {preset.description}" for name, preset in PRESETS.items())
        + ". --model_config changes its arguments.",
    )
    flags.DEFINE_string(
        "model_config",
        None,
        "JSON object of IRevNet arguments that override the preset's, e.g. '{\"classes\": 100}' "
        'or \'{"blocks": [1, 1], "strides": [1, 2], "channels": [8, 32], "input_shape": '
        '[32, 32, 3], "classes": 5}\' (`kir.IRevNet.from_preset(model, **model_config)`).',
    )


def parse_model_arguments(model, model_config, flag="--model"):
    """Validates a preset name and its JSON config; returns the constructor keyword arguments.

    Cheap (builds nothing), so the applications call it before any slow work.
    """
    from keras_irevnet.models import PRESETS

    if model is None:
        raise ValueError(f"{flag} is required: one of {', '.join(PRESETS)}.")
    if model not in PRESETS:
        raise ValueError(f"{flag}: unknown model {model!r}; expected one of {', '.join(PRESETS)}.")
    kwargs = {}
    if model_config:
        try:
            kwargs = json.loads(model_config)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"--model_config must be a JSON object, got {model_config!r} ({error})."
            ) from None
        if not isinstance(kwargs, dict):
            raise ValueError(f"--model_config must be a JSON object, got {model_config!r}.")
    return kwargs


def build_model(model, model_config=None, weights=None):
    """The i-RevNet preset `model`, with the arguments of `model_config` (JSON)."""
    import keras_irevnet as kir

    kwargs = parse_model_arguments(model, model_config)
    try:
        return kir.IRevNet.from_preset(model, weights=weights, **kwargs)
    except TypeError as error:  # an argument IRevNet does not take
        raise ValueError(f"--model_config does not fit --model={model}: {error}") from None


def preprocessing_mode(model, preprocessing=None):
    """The `preprocess_input` mode for `model`: the given one, else its preset's."""
    from keras_irevnet.models import get_preset

    mode = preprocessing or get_preset(model).preprocessing
    if mode is None:
        raise ValueError(
            f"--preprocessing (imagenet or cifar) is required with --model={model}, whose "
            "preset has no preprocess_input mode."
        )
    return mode


def load_model(
    model_path=None, official_checkpoint=None, model=None, model_config=None, weights=None
):
    """The i-RevNet from a .keras file, a .weights.h5 file (with `model`), the authors'
    checkpoint (with `model`), or published weights (`weights="imagenet"`, with `model`)."""
    import keras_irevnet as kir

    if model_path and model_path.endswith(".keras"):
        return kir.models.load_irevnet(model_path)
    if model_path:  # .weights.h5: the constructor checks that it fits
        return build_model(model, model_config, weights=model_path)
    if weights:
        return build_model(model, model_config, weights=weights)
    keras_model = build_model(model, model_config)
    kir.load_official_weights(keras_model, official_checkpoint)
    return keras_model


def define_model_source_flags():
    """--model_path, --weights, --official_checkpoint and the preset flags (--model,
    --model_config): where a program's model comes from."""
    flags.DEFINE_string("model_path", None, "A .keras file, or a .weights.h5 file with --model.")
    flags.DEFINE_enum(
        "weights", None, ["imagenet"], "Published weights of --model (bijective: imagenet)."
    )
    flags.DEFINE_string(
        "official_checkpoint", None, "The authors' PyTorch checkpoint (.pth.tar), with --model."
    )
    define_model_flags()


def check_model_source(args):
    """Exactly one source, its file present and its preset known: ValueError /
    FileNotFoundError naming the flag, before any slow work."""
    sources = [name for name in ("model_path", "weights", "official_checkpoint") if args[name]]
    if len(sources) != 1:
        raise ValueError(
            "Give exactly one of --model_path (a .keras file, or a .weights.h5 file with "
            "--model), --weights=imagenet (with --model) and --official_checkpoint (with "
            f"--model); got {', '.join('--' + s for s in sources) or 'none'}."
        )
    path = args["model_path"] or args["official_checkpoint"]
    if path and not os.path.isfile(path):
        raise FileNotFoundError(f"--{sources[0]}: file not found: {path!r}.")
    if not (args["model_path"] or "").endswith(".keras"):
        parse_model_arguments(args["model"], args["model_config"])


def load_model_from(args):
    """`load_model` with the flags of `define_model_source_flags`."""
    return load_model(
        args["model_path"],
        args["official_checkpoint"],
        args["model"],
        args["model_config"],
        weights=args["weights"],
    )
