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
devices so the multi-device paths run without GPUs.

Kill the program at any point and start it again with the same flags: it continues from the
newest checkpoint (every --checkpoint_every steps and at each epoch's end) with the data
where it stopped, and ends with the weights an uninterrupted run would have. --epochs may be
raised to train a finished run further. A loss that stops being finite ends the run at once
(exit status 3) without saving anything after the last finite step.

Writes to --model_dir: checkpoints/ (the newest two), logs/ (TensorBoard, with the inversion
error and reconstructions of every validation), history.csv, run_config.json, model.keras
(architecture and weights, uncompiled: it loads with keras and keras_irevnet alone) and
metrics.json (top1, top5, inverse_rel_error, epochs, backend, ...), every file written
atomically. Every flag is checked before any slow work starts.
"""

import dataclasses
import os
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags():
    """The program's flags (defaults of None mean: the dataset's recipe); returns their
    names."""
    from applications.training.recipes import SCHEDULE_HELP
    from keras_irevnet.data import SPECS
    from keras_irevnet.models import PRESETS

    before = set(FLAGS)

    flags.DEFINE_string(
        "dataset",
        "digits",
        f"One of {', '.join(SPECS)}; digits (scikit-learn, offline) is the default, "
        "the others are read with tensorflow-datasets.",
    )
    flags.DEFINE_string("data_dir", None, "tfds data directory (default ~/tensorflow_datasets).")
    flags.DEFINE_string(
        "manual_dir",
        None,
        "Directory holding ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar for "
        "imagenet2012 (default <data_dir>/downloads/manual).",
    )
    flags.DEFINE_enum(
        "model",
        None,
        list(PRESETS),
        "The i-RevNet preset (keras_irevnet.models.PRESETS): "
        + "; ".join(f"{name}: {preset.description}" for name, preset in PRESETS.items())
        + ". Default: the dataset's (digits tiny, cifar* cifar, imagenet2012 bijective).",
    )
    flags.DEFINE_integer(
        "image_size",
        None,
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
        "weight_decay",
        None,
        "Coupled L2 weight decay as torch.optim.SGD applies it, on every trainable weight "
        "(default: cifar / digits 5e-4, imagenet2012 1e-4).",
    )
    flags.DEFINE_string("schedule", "auto", SCHEDULE_HELP)
    flags.DEFINE_bool(
        "memory_efficient",
        False,
        "Reversible backprop: less activation memory, slower steps (off by default).",
    )
    flags.DEFINE_bool(
        "mixed_precision",
        False,
        "Train with the mixed_float16 policy on GPU (mixed_bfloat16 on CPU); the inverse is "
        "then exact only to that precision.",
    )
    flags.DEFINE_integer(
        "seed",
        0,
        "Seeds the weights, shuffling and augmentation (with deterministic data order); "
        "-1 for fresh randomness.",
    )
    flags.DEFINE_enum(
        "strategy",
        "none",
        ["none", "mirrored", "multi_worker", "data_parallel"],
        "none; mirrored (tf.distribute.MirroredStrategy over the GPUs, or over --cpu_devices "
        "CPU devices without GPUs); multi_worker (MultiWorkerMirroredStrategy from TF_CONFIG); "
        "data_parallel (JAX: keras.distribution.DataParallel over all devices).",
    )
    flags.DEFINE_bool(
        "deterministic",
        True,
        "Fixed order of the input pipeline's elements (with --seed: the same batches on every "
        "run); --nodeterministic lets tf.data reorder them for throughput.",
    )
    flags.DEFINE_integer("cpu_devices", 0, "Split the CPU into N logical devices (0: off).")
    flags.DEFINE_string(
        "model_dir",
        None,
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
        "inverse_images", 256, "Validation images to measure the final inversion error on."
    )
    flags.DEFINE_integer(
        "monitor_images",
        32,
        "Validation images whose inversion error is measured at every validation and logged "
        "(history, TensorBoard scalars and images); 0: off.",
    )
    flags.DEFINE_integer(
        "checkpoint_every",
        2500,
        "Steps between checkpoints inside an epoch (a checkpoint also ends every epoch); 0: "
        "at epoch ends only. 2500 steps is half an ImageNet epoch at batch 256, about 25 "
        "minutes of i-RevNet-301 training on 8 V100s, for a few seconds of writing.",
    )
    flags.DEFINE_integer("verbose", 1, "model.fit verbosity: 1 progress bar, 2 one line/epoch.")
    return tuple(sorted(set(FLAGS) - before))


def resolve_arguments(values):
    """The flags with recipe defaults filled in, checked; raises ValueError naming the flag.

    Cheap: builds nothing, reads no data.
    """
    from applications.training import recipes
    from keras_irevnet.data import dataset_spec

    args = dict(values)
    try:
        spec = dataset_spec(args["dataset"])
    except ValueError as error:
        raise ValueError(f"--dataset: {error}") from None
    recipe = recipes.RECIPES[args["dataset"]]
    for key in ("model", "batch_size", "epochs", "weight_decay"):
        if args[key] is None:
            args[key] = getattr(recipe, key)
    if args["image_size"] is None:
        args["image_size"] = spec.default_image_size
    for key in ("batch_size", "epochs", "image_size"):
        if args[key] < 1:
            raise ValueError(f"--{key} must be positive, got {args[key]}.")
    for key in ("checkpoint_every", "monitor_images", "inverse_images"):
        if args[key] < 0 or (key == "inverse_images" and args[key] < 1):
            raise ValueError(f"--{key} must not be negative, got {args[key]}.")
    if args["steps_per_epoch"] is not None and args["steps_per_epoch"] < 1:
        raise ValueError(f"--steps_per_epoch must be positive, got {args['steps_per_epoch']}.")
    if args["learning_rate"] <= 0 or args["weight_decay"] < 0:
        raise ValueError(
            "--learning_rate must be positive and --weight_decay non-negative, got "
            f"{args['learning_rate']} and {args['weight_decay']}."
        )
    recipes.check_image_size(args["model"], args["image_size"])
    recipes.parse_schedule(args["schedule"], args["dataset"], args["epochs"], 10**6)  # syntax
    if args["model_dir"] is None:
        args["model_dir"] = os.path.join("runs", f"irevnet_{args['model']}_{args['dataset']}")
    args["seed"] = None if args["seed"] < 0 else args["seed"]
    args["classes"] = spec.classes
    return args


def run(args):
    """Trains, evaluates and saves as the module docstring says; returns the metrics dict.

    `args` comes from `resolve_arguments`.

    Raises:
        ValueError / FileNotFoundError: bad flags or data, before any slow work.
        TrainingDiverged: the loss stopped being finite (nothing saved after that point).
        CheckpointError: the run's checkpoints exist but none can be read.
    """
    return train_and_evaluate(args, prepare(args))


class ExportFailed(RuntimeError):
    """Training finished and its files are saved, but --export_dir could not be written."""


@dataclasses.dataclass
class Setup:
    """What `prepare` found out and built, for `train_and_evaluate`."""

    started: float
    backend: str
    spec: object
    distributor: object
    train: object  # a data.Split of the training split (counts; its dataset starts at 0)
    validation: object
    steps_per_epoch: int
    schedule: tuple  # (boundaries in steps, factor)
    make_train_dataset: object  # start_step -> tf.data.Dataset of this process


def prepare(args):
    """Everything that can fail on bad input, before the model is built: the strategy on this
    backend, the devices, the data (ImageNet's archives), the batch split, the schedule, a
    --model_dir of another run. Returns a `Setup`."""
    started = time.time()
    from applications.training import distribute

    backend = distribute.current_backend()
    distribute.check_strategy(args["strategy"], backend, args["cpu_devices"])
    # Before anything touches a device (the data pipeline included).
    distribute.configure_devices(backend, args["strategy"], args["cpu_devices"])

    from keras_irevnet import data

    spec = data.dataset_spec(args["dataset"])
    if spec.needs_manual_dir:  # the archives, before hours of preparation start
        data.check_prepared_or_preparable(
            spec, ("train", "validation"), args["data_dir"], args["manual_dir"]
        )
    distributor = distribute.make_distributor(args["strategy"], backend)
    data.check_batch_size(args["batch_size"], distributor.num_replicas)
    _set_seed_and_policy(args, distributor, backend)

    train, validation, make_train_dataset = _datasets(args, distributor)
    steps_per_epoch = args["steps_per_epoch"] or train.steps
    if steps_per_epoch < 1:
        raise ValueError(
            f"--batch_size={args['batch_size']} is larger than the {train.num_examples} "
            f"training images of {args['dataset']}; use a smaller batch."
        )
    _check_validation_split(args, validation, distributor)
    schedule = _reconcile_run(args, steps_per_epoch, distributor.is_chief)
    return Setup(
        started,
        backend,
        spec,
        distributor,
        train,
        validation,
        steps_per_epoch,
        schedule,
        make_train_dataset,
    )


def _datasets(args, distributor):
    """(train, validation, make_train_dataset): the splits and the resumable training stream.

    `make_train_dataset(start_step)` is this process's shard of the training batches from
    `start_step` on (the data order continues where a resumed run stopped).
    """
    from keras_irevnet import data

    common = dict(
        image_size=args["image_size"],
        seed=args["seed"],
        num_replicas=distributor.num_replicas,
        data_dir=args["data_dir"],
        manual_dir=args["manual_dir"],
        deterministic=args["deterministic"],
    )
    print(f"Preparing {args['dataset']} (image size {args['image_size']}) ...", flush=True)
    batch = args["batch_size"]
    train = data.make_dataset(args["dataset"], "train", batch, **common)
    validation = data.make_dataset(
        args["dataset"], "validation", batch, shard=distributor.shard(training=False), **common
    )
    validation = dataclasses.replace(
        validation, dataset=distributor.local_batches(validation.dataset, batch)
    )

    def make_train_dataset(start_step):
        dataset = data.make_dataset(
            args["dataset"],
            "train",
            batch,
            start_step=start_step,
            shard=distributor.shard(training=True),
            prepare=False,
            **common,
        ).dataset
        return distributor.local_batches(dataset, batch)

    return train, validation, make_train_dataset


def _set_seed_and_policy(args, distributor, backend):
    import keras

    from applications.training import distribute

    if args["seed"] is not None:
        keras.utils.set_random_seed(args["seed"])
    if args["mixed_precision"]:
        # float16 needs a GPU to be fast (and loss scaling, which compile adds); CPUs have
        # bfloat16.
        policy = "mixed_float16" if distribute.has_gpu(backend) else "mixed_bfloat16"
        keras.config.set_dtype_policy(policy)
        print(f"Mixed precision: the {policy} policy.", flush=True)


def _check_validation_split(args, validation, distributor):
    last_batch = validation.num_examples % args["batch_size"]
    # (Shared out over processes, validation keeps full batches only.)
    if (
        args["strategy"] == "data_parallel"
        and distributor.process is None
        and last_batch % distributor.num_replicas
    ):
        raise ValueError(
            f"--strategy=data_parallel: the {validation.num_examples} validation images end "
            f"in a batch of {last_batch}, which does not split over {distributor.num_replicas} "
            "devices; choose a --batch_size that leaves a multiple of the device count."
        )


def _reconcile_run(args, steps_per_epoch, is_chief):
    """The schedule to train with, after checking the flags against the run in --model_dir."""
    from applications.training import checkpoints, recipes, run_config
    from keras_irevnet import atomic

    model_dir = args["model_dir"]
    if is_chief:  # what killed writers left behind
        atomic.remove_partials(model_dir)
        atomic.remove_partials(checkpoints.checkpoint_dir(model_dir))
    schedule = recipes.parse_schedule(
        args["schedule"], args["dataset"], args["epochs"], steps_per_epoch
    )
    flags = {name: args[name] for name in run_config.FIXED_FLAGS if name != "steps_per_epoch"}
    flags.update(steps_per_epoch=steps_per_epoch, schedule=args["schedule"], epochs=args["epochs"])
    return run_config.reconcile(
        model_dir, flags, schedule, checkpoints.latest_step(model_dir), write=is_chief
    )


def train_and_evaluate(args, setup):
    """Builds and compiles the model in the strategy scope, resumes, fits, evaluates, measures
    the inversion error, saves; returns the metrics."""
    model, state = _build_and_restore(args, setup)
    resumed_step = state.step
    train_seconds = _fit(model, args, setup, state)
    metrics = _evaluate(model, args, setup, state.step, resumed_step, train_seconds)
    _save_outputs(model, metrics, args, setup.distributor, trained=state.step > resumed_step)
    _print_summary(metrics, os.path.abspath(args["model_dir"]), args["export_dir"])
    return metrics


def _build_and_restore(args, setup):
    import keras

    import keras_irevnet as kir
    from applications.training import checkpoints, recipes
    from applications.training.metrics import accuracy_metrics
    from applications.training.optimizer import CoupledWeightDecaySGD

    boundaries, factor = setup.schedule
    with setup.distributor.scope():
        model = kir.IRevNet.from_preset(
            args["model"],
            input_shape=(args["image_size"], args["image_size"], 3),
            classes=setup.spec.classes,
            memory_efficient=args["memory_efficient"],
        )
        model.compile(
            optimizer=CoupledWeightDecaySGD(
                recipes.learning_rate_schedule(args["learning_rate"], boundaries, factor),
                momentum=0.9,
                l2=args["weight_decay"],
            ),
            loss=keras.losses.SparseCategoricalCrossentropy(),
            metrics=accuracy_metrics(setup.spec.classes),
        )
        state = checkpoints.restore(model, args["model_dir"])
    print(
        f"Model {model.name}: {model.count_params():,} parameters, Phi(x) of shape "
        f"{model.feature_shape}; backend {setup.backend}, strategy {setup.distributor.name} "
        f"over {setup.distributor.num_replicas} replica(s).",
        flush=True,
    )
    if state.step:
        epoch, in_epoch = state.position(setup.steps_per_epoch)
        where = (
            f"epoch {epoch}"
            if not in_epoch
            else (f"step {in_epoch} of {setup.steps_per_epoch} in epoch {epoch + 1}")
        )
        print(f"Resuming after {where} (global step {state.step}) from {state.path}.", flush=True)
    return model, state


def _callbacks(model_dir, args, setup, state, start_step):
    import keras

    from applications.training import checkpoints
    from applications.training.divergence import StopOnDivergence
    from keras_irevnet import data
    from keras_irevnet.callbacks import InversionMonitor

    chief = setup.distributor.is_chief
    log_dir = os.path.join(model_dir, "logs")
    callbacks = [
        StopOnDivergence(setup.steps_per_epoch, start_step),
    ]
    if args["monitor_images"]:
        callbacks.append(
            InversionMonitor(
                data.first_images(setup.validation.dataset, args["monitor_images"]),
                log_dir=log_dir if chief else None,
            )
        )
    callbacks.append(
        checkpoints.TrainingCheckpoint(
            model_dir,
            setup.steps_per_epoch,
            state,
            args["checkpoint_every"],
            write=chief,
        )
    )
    if chief:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=log_dir))
    return callbacks


def _fit(model, args, setup, state):
    """Trains from `state` to --epochs; returns the seconds it took.

    A run resumed inside an epoch first finishes that epoch (one `fit` call for its remaining
    steps), then trains the rest: Keras' `fit` counts epochs, not steps.
    """
    steps = setup.steps_per_epoch
    epoch, in_epoch = state.position(steps)
    validation = {}
    if args["validation_freq"]:
        validation = dict(
            validation_data=setup.validation.dataset,
            validation_steps=_eval_steps(args, setup.validation),
            validation_freq=args["validation_freq"],
        )
    started = time.time()
    while epoch < args["epochs"]:
        start_step = state.step
        last = epoch + 1 if in_epoch else args["epochs"]
        model.fit(
            setup.make_train_dataset(start_step),
            initial_epoch=epoch,
            epochs=last,
            steps_per_epoch=steps - in_epoch,
            callbacks=_callbacks(args["model_dir"], args, setup, state, start_step),
            verbose=args["verbose"],
            shuffle=False,  # the pipeline shuffles (Keras cannot shuffle a tf.data.Dataset)
            **validation,
        )
        if state.step == start_step:  # the pipeline repeats forever, so this is a bug
            raise RuntimeError(f"fit made no progress from step {start_step}.")
        epoch, in_epoch = state.position(steps)
    return time.time() - started


def _evaluate(model, args, setup, steps, resumed_step, train_seconds):
    from keras_irevnet import analysis, data

    validation = setup.validation
    results = model.evaluate(
        validation.dataset, steps=_eval_steps(args, validation), verbose=0, return_dict=True
    )
    images = data.first_images(validation.dataset, args["inverse_images"])
    inversion = analysis.reconstruction_error(model, images, batch_size=args["batch_size"])
    return {
        "top1": float(results["top1"]),
        **({"top5": float(results["top5"])} if "top5" in results else {}),
        "loss": float(results["loss"]),
        "inverse_rel_error": inversion["rel_error"],
        "inverse_images": len(images),
        "epochs": args["epochs"],
        "steps": steps,
        "resumed_after_step": resumed_step,
        "backend": setup.backend,
        "strategy": setup.distributor.name,
        "replicas": setup.distributor.num_replicas,
        "dataset": args["dataset"],
        "model": args["model"],
        "image_size": args["image_size"],
        "validation_images": min(
            validation.num_examples, _eval_steps(args, validation) * args["batch_size"]
        ),
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(time.time() - setup.started, 1),
    }


def _save_outputs(model, metrics, args, distributor, trained):
    """model.keras, metrics.json and the optional export, written by the chief only.

    A finished run started again (nothing `trained`) keeps its model.keras byte for byte, so
    its export is recognised as done rather than refused as a different model.
    """
    from applications.training import checkpoints
    from keras_irevnet import atomic

    shown = os.path.abspath(args["model_dir"])
    model_path = os.path.join(shown, "model.keras")
    if trained or not os.path.isfile(model_path):
        checkpoints.save_portable_model(model, model_path, write=distributor.is_chief)
    if not distributor.is_chief:
        return
    atomic.write_json(os.path.join(shown, "metrics.json"), metrics)
    if args["export_dir"]:
        from applications import export

        # The export is checked against Keras; bfloat16 / float16 agree only to ~1e-2.
        tolerance = 1e-2 if args["mixed_precision"] else 1e-4
        export_dir = os.path.abspath(args["export_dir"])
        try:
            export.run(export_dir, model_path=model_path, tolerance=tolerance)
        except (ValueError, FileExistsError, RuntimeError) as error:
            raise ExportFailed(
                f"the export to {export_dir} failed: {error} The trained model is saved; "
                f"export it on its own with: python -m applications.export "
                f"--model_path={model_path} --saved_model_dir=DIR --tolerance={tolerance}"
            ) from None


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
    return (
        validation.steps
        if args["eval_steps"] is None
        else min(args["eval_steps"], validation.steps)
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from applications.training.checkpoints import CheckpointError
    from applications.training.divergence import TrainingDiverged

    try:
        args = resolve_arguments({name: FLAGS[name].value for name in FLAG_NAMES})
        setup = prepare(args)
    except (ValueError, FileNotFoundError) as error:
        # Bad flags or missing data: one clear line instead of a traceback. Errors during
        # training itself keep their traceback.
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        train_and_evaluate(args, setup)
    except TrainingDiverged as error:
        print(f"error: {error}. {_divergence_advice(args)}", file=sys.stderr)
        return 3
    except (CheckpointError, ExportFailed) as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    return 0


def _divergence_advice(args):
    from applications.training import checkpoints

    step = checkpoints.latest_step(args["model_dir"])
    kept = (
        f"The newest checkpoint, step {step} in {checkpoints.checkpoint_dir(args['model_dir'])}, "
        "is untouched"
        if step
        else "No checkpoint was written"
    )
    return (
        f"{kept}; nothing after the last finite step was saved. Try a lower --learning_rate "
        f"(this run: {args['learning_rate']}) with a new --model_dir: resuming with the same "
        "flags diverges again at the same step."
    )


FLAG_NAMES = define_flags()

if __name__ == "__main__":
    app.run(main)
