r"""Trains an i-RevNet with `model.fit` on tf.data pipelines, then measures and saves it.

With no flags it trains the `tiny` i-RevNet on scikit-learn's handwritten digits (offline,
real data) in a minute or two on a CPU, into runs/irevnet_tiny_digits:

    python -m applications.train

ImageNet as in the paper (tfds builds imagenet2012 from the two ILSVRC2012 archives in
--manual_dir the first time; that takes hours), on all GPUs of the machine:

    python -m applications.train --dataset=imagenet2012 --model=bijective \
        --manual_dir=/data/ilsvrc2012 --data_dir=/data/tfds --strategy=mirrored \
        --model_dir=runs/bijective_imagenet

Runs on every Keras backend (KERAS_BACKEND=tensorflow|jax|torch); --strategy=mirrored and
multi_worker need TensorFlow, data_parallel needs JAX. --cpu_devices=N splits the CPU into N
devices so the multi-device paths run without GPUs. Kill the program at any point and start
it again with the same flags: it continues after the last finished epoch.

Writes to --model_dir: checkpoints/ (one per epoch, the newest two kept), logs/ (TensorBoard),
history.csv, run_config.json, model.keras (architecture and weights, uncompiled: it loads
with keras and keras_irevnet alone) and metrics.json (top1, top5, inverse_rel_error,
epochs, backend, ...). Every flag is checked before any slow work starts.
"""

import json
import os
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS
DATASET_NAMES = ("digits", "cifar10", "cifar100", "imagenet2012")


def define_flags():
    """The program's flags (defaults of None mean: the dataset's recipe); returns their
    names."""
    from applications.training.presets import PRESETS, SCHEDULE_HELP

    before = set(FLAGS)

    flags.DEFINE_string(
        "dataset", "digits",
        f"One of {', '.join(DATASET_NAMES)}; digits (scikit-learn, offline) is the default, "
        "the others are read with tensorflow-datasets.",
    )
    flags.DEFINE_string("data_dir", None, "tfds data directory (default ~/tensorflow_datasets).")
    flags.DEFINE_string(
        "manual_dir", None,
        "Directory holding ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar for "
        "imagenet2012 (default <data_dir>/downloads/manual).",
    )
    flags.DEFINE_enum(
        "model", None, list(PRESETS),
        "Architecture preset: tiny (seconds on a CPU), cifar (IRevNetCIFAR's), bijective / "
        "injective (the ImageNet models). Default: the dataset's (digits tiny, cifar* cifar, "
        "imagenet2012 bijective).",
    )
    flags.DEFINE_integer(
        "image_size", None,
        "Side of the square training images; a multiple of the model's total downsampling. "
        "Default: the dataset's (digits 16, cifar 32, imagenet2012 224).",
    )
    flags.DEFINE_integer("batch_size", None, "Global batch size, split over the replicas.")
    flags.DEFINE_integer("epochs", None, "Epochs to train (digits 15, cifar 200, imagenet 128).")
    flags.DEFINE_integer(
        "steps_per_epoch", None, "Batches per epoch (default: one pass over the train split)."
    )
    flags.DEFINE_float("learning_rate", 0.1, "Initial SGD learning rate (momentum 0.9).")
    flags.DEFINE_float(
        "weight_decay", None,
        "Coupled L2 weight decay as torch.optim.SGD applies it, on every trainable weight "
        "(default: cifar / digits 5e-4, imagenet2012 1e-4).",
    )
    flags.DEFINE_string("schedule", "auto", SCHEDULE_HELP)
    flags.DEFINE_bool("memory_efficient", False, "Reversible backprop (recompute activations).")
    flags.DEFINE_bool(
        "mixed_precision", False,
        "Train with the mixed_float16 policy on GPU (mixed_bfloat16 on CPU); the inverse is "
        "then exact only to that precision.",
    )
    flags.DEFINE_integer(
        "seed", 0,
        "Seeds the weights, shuffling and augmentation (with deterministic data order); "
        "-1 for fresh randomness.",
    )
    flags.DEFINE_enum(
        "strategy", "none", ["none", "mirrored", "multi_worker", "data_parallel"],
        "none; mirrored (tf.distribute.MirroredStrategy over the GPUs, or over --cpu_devices "
        "CPU devices without GPUs); multi_worker (MultiWorkerMirroredStrategy from TF_CONFIG); "
        "data_parallel (JAX: keras.distribution.DataParallel over all devices).",
    )
    flags.DEFINE_bool(
        "deterministic", True,
        "Fixed order of the input pipeline's elements (with --seed: the same batches on every "
        "run); --nodeterministic lets tf.data reorder them for throughput.",
    )
    flags.DEFINE_integer("cpu_devices", 0, "Split the CPU into N logical devices (0: off).")
    flags.DEFINE_string(
        "model_dir", None,
        "Checkpoints, logs and results; the run resumes from it (default "
        "runs/irevnet_<model>_<dataset>).",
    )
    flags.DEFINE_string("export_dir", None, "Also export a SavedModel (serve/features/inverse).")
    flags.DEFINE_integer(
        "validation_freq", 1, "Validate every N epochs during training (0: only at the end)."
    )
    flags.DEFINE_integer(
        "eval_steps", None, "Validation batches for the final evaluation (default: all)."
    )
    flags.DEFINE_integer(
        "inverse_images", 256, "Validation images to measure the inversion error on."
    )
    flags.DEFINE_integer("verbose", 1, "model.fit verbosity: 1 progress bar, 2 one line/epoch.")
    return tuple(sorted(set(FLAGS) - before))


def resolve_arguments(values):
    """The flags with recipe defaults filled in, checked; raises ValueError naming the flag.

    Cheap: builds nothing, reads no data.
    """
    from applications.training import presets

    args = dict(values)
    if args["dataset"] not in DATASET_NAMES:
        raise ValueError(
            f"--dataset: unknown dataset {args['dataset']!r}; expected one of "
            f"{', '.join(DATASET_NAMES)} (digits is the offline default)."
        )
    from keras_irevnet.data import dataset_spec

    spec = dataset_spec(args["dataset"])
    recipe = presets.RECIPES[args["dataset"]]
    for key in ("model", "batch_size", "epochs", "weight_decay"):
        if args[key] is None:
            args[key] = getattr(recipe, key)
    if args["image_size"] is None:
        args["image_size"] = spec.default_image_size
    for key in ("batch_size", "epochs", "image_size"):
        if args[key] < 1:
            raise ValueError(f"--{key} must be positive, got {args[key]}.")
    if args["steps_per_epoch"] is not None and args["steps_per_epoch"] < 1:
        raise ValueError(f"--steps_per_epoch must be positive, got {args['steps_per_epoch']}.")
    if args["learning_rate"] <= 0 or args["weight_decay"] < 0:
        raise ValueError(
            "--learning_rate must be positive and --weight_decay non-negative, got "
            f"{args['learning_rate']} and {args['weight_decay']}."
        )
    presets.check_image_size(args["model"], args["image_size"])
    presets.parse_schedule(args["schedule"], args["dataset"], args["epochs"], 10**6)  # syntax
    if args["model_dir"] is None:
        args["model_dir"] = os.path.join("runs", f"irevnet_{args['model']}_{args['dataset']}")
    args["seed"] = None if args["seed"] < 0 else args["seed"]
    args["classes"] = spec.classes
    return args


def run(args):
    """Trains, evaluates and saves as the module docstring says; returns the metrics dict.

    `args` comes from `resolve_arguments`.
    """
    return train_and_evaluate(args, prepare(args))


def prepare(args):
    """Everything that can fail on bad input, before the model is built: the strategy on this
    backend, the devices, the data (ImageNet's archives), the batch split, the schedule, a
    --model_dir of another run. Returns what `train_and_evaluate` needs."""
    started = time.time()
    from applications.training import distribute

    backend = distribute.current_backend()
    distribute.check_strategy(args["strategy"], backend, args["cpu_devices"])
    # Before anything touches a device (the data pipeline included).
    distribute.configure_cpu_devices(backend, args["cpu_devices"])

    from keras_irevnet import data

    spec = data.dataset_spec(args["dataset"])
    if spec.needs_manual_dir:  # the archives, before hours of preparation start
        data.check_prepared_or_preparable(
            spec, ("train", "validation"), args["data_dir"], args["manual_dir"]
        )
    distributor = distribute.make_distributor(args["strategy"], backend)
    data.check_batch_size(args["batch_size"], distributor.num_replicas)

    import keras

    from applications.training import checkpoints, presets

    model_dir = args["model_dir"]
    if args["seed"] is not None:
        keras.utils.set_random_seed(args["seed"])
    if args["mixed_precision"]:
        # float16 needs a GPU to be fast (and loss scaling, which compile adds); CPUs have
        # bfloat16.
        policy = "mixed_float16" if distribute.has_gpu(backend) else "mixed_bfloat16"
        keras.config.set_dtype_policy(policy)
        print(f"Mixed precision: the {policy} policy.", flush=True)

    common = dict(
        image_size=args["image_size"], seed=args["seed"], num_replicas=distributor.num_replicas,
        data_dir=args["data_dir"], manual_dir=args["manual_dir"],
        deterministic=args["deterministic"],
    )
    print(f"Preparing {args['dataset']} (image size {args['image_size']}) ...", flush=True)
    train = data.make_dataset(args["dataset"], "train", args["batch_size"], **common)
    validation = data.make_dataset(args["dataset"], "validation", args["batch_size"], **common)
    steps_per_epoch = args["steps_per_epoch"] or train.steps
    if steps_per_epoch < 1:
        raise ValueError(
            f"--batch_size={args['batch_size']} is larger than the {train.num_examples} "
            f"training images of {args['dataset']}; use a smaller batch."
        )
    last_batch = validation.num_examples % args["batch_size"]
    if args["strategy"] == "data_parallel" and last_batch % distributor.num_replicas:
        raise ValueError(
            f"--strategy=data_parallel: the {validation.num_examples} validation images end "
            f"in a batch of {last_batch}, which does not split over {distributor.num_replicas} "
            "devices; choose a --batch_size that leaves a multiple of the device count."
        )
    boundaries, factor = presets.parse_schedule(
        args["schedule"], args["dataset"], args["epochs"], steps_per_epoch
    )
    # The flags a checkpoint belongs to (not --strategy: the batch is global, so a run may
    # resume on other devices; not --epochs: a finished run may be extended).
    run_config = {
        key: args[key]
        for key in ("dataset", "model", "image_size", "batch_size", "learning_rate",
                    "weight_decay", "memory_efficient", "mixed_precision", "seed")
    }
    run_config.update(steps_per_epoch=steps_per_epoch, schedule_steps=list(boundaries),
                      schedule_factor=factor)
    checkpoints.check_run_config(model_dir, run_config, write=distributor.is_chief)
    return dict(
        started=started, backend=backend, spec=spec, distributor=distributor, train=train,
        validation=validation, steps_per_epoch=steps_per_epoch, boundaries=boundaries,
        factor=factor,
    )


def train_and_evaluate(args, setup):
    """Builds and compiles the model in the strategy scope, resumes, fits, evaluates, measures
    the inversion error, saves; returns the metrics."""
    import keras

    from applications.training import checkpoints, evaluation, presets
    from applications.training.metrics import accuracy_metrics
    from applications.training.optimizer import CoupledWeightDecaySGD

    started, backend, spec = setup["started"], setup["backend"], setup["spec"]
    distributor, train, validation = setup["distributor"], setup["train"], setup["validation"]
    steps_per_epoch = setup["steps_per_epoch"]
    boundaries, factor = setup["boundaries"], setup["factor"]
    model_dir = args["model_dir"]
    with distributor.scope():
        model = presets.build_model(
            args["model"], args["image_size"], spec.classes, args["memory_efficient"]
        )
        model.compile(
            optimizer=CoupledWeightDecaySGD(
                presets.learning_rate_schedule(args["learning_rate"], boundaries, factor),
                momentum=0.9,
                l2=args["weight_decay"],
            ),
            loss=keras.losses.SparseCategoricalCrossentropy(),
            metrics=accuracy_metrics(spec.classes),
        )
        epochs_done = checkpoints.restore(model, model_dir)
    print(
        f"Model {model.name}: {model.count_params():,} parameters, Phi(x) of shape "
        f"{model.feature_shape}; backend {backend}, strategy {distributor.name} over "
        f"{distributor.num_replicas} replica(s).",
        flush=True,
    )
    if epochs_done:
        print(f"Resuming after epoch {epochs_done} from {model_dir}/checkpoints.", flush=True)

    history_csv = os.path.join(model_dir, "history.csv")
    log_dir = os.path.join(model_dir, "logs")
    if distributor.is_chief:
        checkpoints.trim_history(history_csv, epochs_done)
    callbacks = [checkpoints.EpochCheckpoint(model_dir, write=distributor.is_chief)]
    if distributor.is_chief:
        callbacks += [
            keras.callbacks.TensorBoard(log_dir=log_dir),
            keras.callbacks.CSVLogger(history_csv, append=True),
        ]
    fit_started = time.time()
    if epochs_done < args["epochs"]:
        fit_kwargs = {}
        if args["validation_freq"]:
            fit_kwargs = dict(
                validation_data=validation.dataset,
                validation_steps=_eval_steps(args, validation),
                validation_freq=args["validation_freq"],
            )
        model.fit(
            train.dataset,
            epochs=args["epochs"],
            initial_epoch=epochs_done,
            steps_per_epoch=steps_per_epoch,
            callbacks=callbacks,
            verbose=args["verbose"],
            shuffle=False,  # the pipeline shuffles (Keras cannot shuffle a tf.data.Dataset)
            **fit_kwargs,
        )
    train_seconds = time.time() - fit_started

    results = model.evaluate(
        validation.dataset, steps=_eval_steps(args, validation), verbose=0, return_dict=True
    )
    inverse_error, inverted = evaluation.inverse_relative_error(
        model, validation.dataset.as_numpy_iterator(), args["inverse_images"]
    )
    metrics = {
        "top1": float(results["top1"]),
        **({"top5": float(results["top5"])} if "top5" in results else {}),
        "loss": float(results["loss"]),
        "inverse_rel_error": inverse_error,
        "inverse_images": inverted,
        "epochs": args["epochs"],
        "resumed_after_epoch": epochs_done,
        "backend": backend,
        "strategy": distributor.name,
        "replicas": distributor.num_replicas,
        "dataset": args["dataset"],
        "model": args["model"],
        "image_size": args["image_size"],
        "validation_images": validation.num_examples
        if args["eval_steps"] is None else min(validation.num_examples,
                                                args["eval_steps"] * args["batch_size"]),
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(time.time() - started, 1),
    }
    shown = os.path.abspath(model_dir)  # the summary names absolute paths
    model_path = os.path.join(shown, "model.keras")
    metrics_path = os.path.join(shown, "metrics.json")
    if distributor.is_chief:
        checkpoints.save_portable_model(model, model_path)
        with open(metrics_path, "w") as f:
            json.dump(metrics, f, indent=2)
        if args["export_dir"]:
            from applications import export

            # The export is checked against Keras; bfloat16 / float16 agree only to ~1e-2.
            export.run(args["export_dir"], model_path=model_path,
                       tolerance=1e-2 if args["mixed_precision"] else 1e-4)
    _print_summary(metrics, shown, args["export_dir"])
    return metrics


def _print_summary(metrics, shown, export_dir):
    """Prints the results and where every output went (`shown`: the absolute model_dir)."""
    top5 = f", top-5 {metrics['top5']:.4f}" if "top5" in metrics else ""
    lines = [
        "",
        f"Validation ({metrics['validation_images']} images): top-1 {metrics['top1']:.4f}"
        f"{top5}; inversion error ||x - inverse(features(x))|| / ||x|| = "
        f"{metrics['inverse_rel_error']:.2e} on {metrics['inverse_images']} images.",
        f"Trained in {metrics['train_seconds']:.1f} s, {metrics['wall_seconds']:.1f} s in all.",
        f"  model:       {os.path.join(shown, 'model.keras')}",
        f"  metrics:     {os.path.join(shown, 'metrics.json')}",
        f"  checkpoints: {os.path.join(shown, 'checkpoints')} (resume: run again with the "
        "same flags)",
        f"  history:     {os.path.join(shown, 'history.csv')}",
        f"  TensorBoard: tensorboard --logdir {os.path.join(shown, 'logs')}",
    ]
    if export_dir:
        lines.append(f"  SavedModel:  {export_dir}")
    print("\n".join(lines), flush=True)


def _eval_steps(args, validation):
    return validation.steps if args["eval_steps"] is None else min(
        args["eval_steps"], validation.steps
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    try:
        args = resolve_arguments({name: FLAGS[name].value for name in FLAG_NAMES})
        setup = prepare(args)
    except (ValueError, FileNotFoundError) as error:
        # Bad flags or missing data: one clear line instead of a traceback. Errors during
        # training itself keep their traceback.
        print(f"error: {error}", file=sys.stderr)
        return 2
    train_and_evaluate(args, setup)
    return 0


FLAG_NAMES = define_flags()

if __name__ == "__main__":
    app.run(main)
