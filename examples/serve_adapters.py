"""Serve many FourierFT adapters from one model, one adapter per batch row.

A FourierFT adapter is n coefficients per layer, and adapters trained with
the same settings share their frequency locations, so one model can hold a
whole table of them (`keras_fourierft.AdapterBank`) and let every row of a
batch use its own: one `generate()` or `predict()` call serves a batch
whose rows belong to different fine-tunes, at the cost of one adapter.

Two parts, both offline:

- `llm`: SmolLM2-135M-Instruct (see `instruct_llm.py`) gets two adapters,
  trained here for a few steps each: number words to digits, and digits to
  number words. One `generate()` call answers a mixed batch (rows with
  either adapter and with none); each row is then compared with the
  generation of the model with that row's adapter alone.
- `classifier`: the MiniLM word classifier of `finetune_sentiment.py` gets
  two adapters on the same frozen head: polarity (positive or negative) and
  intensity (strongly or mildly rated, |mean| >= 2). A mixed batch of test
  words is scored by both at once; accuracies and the largest difference
  from each adapter alone are printed.

Usage:
    python examples/serve_adapters.py [--part llm|classifier|both] [--quick]
"""

import argparse
import importlib.resources
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_fourierft  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import finetune_sentiment as sentiment  # noqa: E402
import instruct_llm  # noqa: E402
import smollm2  # noqa: E402

"""
## Training adapters that can share a bank

The adapters of one bank differ only in their coefficients: the same
targets, `n_frequency`, seed and `scaling`, and every other weight shared.
Here each adapter starts from zeros on the same model and is saved on its
own (`save_fourierft_weights`); the next one starts from zeros again.
"""


def train_adapters(model, trainer, tasks, fit, folder):
    """Trains one adapter per task in turn; returns `{task: file}`."""
    files = {}
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for task, data in tasks.items():
        for layer in keras_fourierft.fourierft_layers(model).values():
            layer.set_spectrum(np.zeros(layer.n_frequency))
        fit(trainer, data)
        files[task] = str(folder / f"{task}.weights.h5")
        keras_fourierft.save_fourierft_weights(model, files[task])
        print(f"trained adapter {task!r}: {files[task]}")
    return files


"""
## Part 1: one `generate()` call, several fine-tunes of SmolLM2
"""

WORDS_QUESTION = "Write this number in words: {digits}"


def llm_tasks(steps, batch_size):
    from num2words import num2words

    pairs, _ = instruct_llm.number_words_data(steps * batch_size, 0, seed=1)
    words = [(WORDS_QUESTION.format(digits=a), num2words(int(a))) for _, a in pairs]
    return {"digits": pairs, "words": words}


def llm_part(args):
    causal_lm = smollm2.load_causal_lm(
        smollm2.convert_cached(args.model_dir),
        sequence_length=instruct_llm.SEQUENCE_LENGTH,
    )
    backbone = causal_lm.backbone
    keras_fourierft.enable_fourierft(
        backbone,
        n_frequency=1000,
        target_layer_names=instruct_llm.TARGETS,
        coefficient_initializer="zeros",
    )
    import keras_hub

    trainer = keras_hub.models.Llama3CausalLM(backbone=backbone, preprocessor=None)
    trainer.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    tokenizer = causal_lm.preprocessor.tokenizer
    end_id = tokenizer.token_to_id("<|im_end|>")

    def fit(trainer, pairs):
        x, y, weights = instruct_llm.training_arrays(tokenizer, pairs, end_id, end_id)
        trainer.fit(x, y, sample_weight=weights, batch_size=args.batch_size, verbose=0)

    tasks = llm_tasks(args.steps, args.batch_size)
    files = train_adapters(backbone, trainer, tasks, fit, args.output_dir + "/llm")

    # The bank: both adapters in every query/value layer; rows choose.
    bank = keras_fourierft.AdapterBank(backbone, capacity=4, max_batch_size=8)
    for task, path in files.items():
        bank.add(task, path)
    questions = [
        instruct_llm.QUESTION.format(words="three thousand and twelve"),
        WORDS_QUESTION.format(digits="4081"),
        "What is the capital of France? Answer in one sentence.",
        instruct_llm.QUESTION.format(words="ninety-nine"),
        WORDS_QUESTION.format(digits="65"),
    ]
    rows = ["digits", "words", None, "digits", "words"]
    bank.select(rows)
    mixed = smollm2.chat(causal_lm, questions, max_new_tokens=24)
    bank.deselect()

    # The reference: the same batch with one adapter loaded alone (or none).
    alone = {}
    for task, path in files.items():
        keras_fourierft.load_fourierft_weights(backbone, path)
        alone[task] = smollm2.chat(causal_lm, questions, max_new_tokens=24)
    keras_fourierft.set_fourierft_enabled(backbone, False)
    alone[None] = smollm2.chat(causal_lm, questions, max_new_tokens=24)
    keras_fourierft.set_fourierft_enabled(backbone, True)
    same = 0
    for i, (task, question, answer) in enumerate(
        zip(rows, questions, mixed, strict=True)
    ):
        equal = answer == alone[task][i]
        same += equal
        print(f"row {i} [{task or 'base'}] {question!r} -> {answer!r}", end="")
        print("  (= alone)" if equal else f"  (alone: {alone[task][i]!r})")
    print(f"{same}/{len(rows)} rows generate what their adapter alone does")
    print(f"bank memory: {bank.memory_bytes:,} bytes for {bank.capacity} adapters")
    return same == len(rows)


"""
## Part 2: a classifier serving two tasks in one batch
"""


def lexicon_means():
    """`{word: mean rating}` of the VADER lexicon."""
    lexicon = importlib.resources.files("vaderSentiment") / "vader_lexicon.txt"
    means = {}
    for line in lexicon.read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        if len(fields) >= 2:
            means[fields[0]] = float(fields[1])
    return means


def classifier_part(args):
    data = sentiment.tokenize(sentiment.split(*sentiment.load_lexicon(), args.quick))
    words = sentiment.split(*sentiment.load_lexicon(), args.quick)
    means = lexicon_means()
    # The same inputs, two labelings: polarity (as the main job) and intensity.
    tasks = {"polarity": {}, "intensity": {}}
    for part in data:
        strong = np.array([abs(means[w]) >= 2.0 for w in words[part][0]], "int32")
        tasks["polarity"][part] = data[part]
        tasks["intensity"][part] = {"x": data[part]["x"], "y": strong}
    model = sentiment.build_classifier(seed=0)
    model.output_dense.trainable = False  # the head is shared by the adapters
    keras_fourierft.enable_fourierft(
        model, target_layer_names=sentiment.TARGETS, **sentiment.FOURIERFT
    )
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )

    def fit(model, task):
        model.fit(**task["train"], epochs=args.epochs, batch_size=32, verbose=0)

    files = train_adapters(model, model, tasks, fit, args.output_dir + "/classifier")
    bank = keras_fourierft.AdapterBank(model, capacity=2, max_batch_size=64)
    for task, path in files.items():
        bank.add(task, path)
    test_x = data["test"]["x"]
    count = len(test_x["token_ids"])
    rows = np.array(list(tasks) * count)[:count]  # alternate the tasks
    mixed = []
    for start in range(0, count, 64):  # one selection per batch of 64 rows
        batch = {k: v[start : start + 64] for k, v in test_x.items()}
        bank.select(list(rows[start : start + 64]))
        mixed.append(model.predict_on_batch(batch))
    bank.deselect()
    mixed = np.concatenate([np.asarray(m) for m in mixed])
    worst = 0.0
    for task, path in files.items():
        keras_fourierft.load_fourierft_weights(model, path)
        alone = np.asarray(model.predict(test_x, batch_size=64, verbose=0))
        mine = rows == task
        labels = tasks[task]["test"]["y"][mine]
        mixed_accuracy = np.mean(mixed[mine].argmax(-1) == labels)
        alone_accuracy = np.mean(alone[mine].argmax(-1) == labels)
        difference = np.abs(mixed[mine] - alone[mine]).max()
        worst = max(worst, difference / np.abs(alone).max())
        print(
            f"{task}: {mine.sum()} mixed-batch rows, accuracy {mixed_accuracy:.1%} "
            f"(alone {alone_accuracy:.1%}), largest logit difference {difference:.2e}"
        )
    return worst <= 1e-5


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["llm", "classifier", "both"], default="both")
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--model-dir", default="outputs/models")
    parser.add_argument("--output-dir", default="outputs/serve_adapters")
    args = parser.parse_args(argv)
    args.steps, args.batch_size = (3, 4) if args.quick else (30, 8)
    args.epochs = 1 if args.quick else 2
    ok = True
    if args.part in ("classifier", "both"):
        ok &= classifier_part(args)
    if args.part in ("llm", "both"):
        ok &= llm_part(args)
    if not ok:
        raise SystemExit("a mixed-batch row differs from its adapter alone")


if __name__ == "__main__":
    main()
