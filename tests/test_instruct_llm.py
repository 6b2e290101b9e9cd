"""`examples/instruct_llm.py`: the data, the loss mask, the table, and the
`--quick` run end to end (with the PEFT export checked in transformers)."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).parents[1]
EXAMPLE = ROOT / "examples" / "instruct_llm.py"
# Keras LoRA r=8 on SmolLM2's query kernel (576, 9, 64) and value kernel
# (576, 3, 64) in 30 layers: Keras's `EinsumDense.enable_lora` factors an
# EinsumDense kernel over its last axis, A `kernel.shape[:-1] + (8,)` and
# B `(8, 64)`.
LORA_PARAMS = 30 * ((576 * 9 * 8 + 8 * 64) + (576 * 3 * 8 + 8 * 64))


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("instruct_llm", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_number_words_are_exact_and_held_out(example):
    from num2words import num2words

    train, held_out = example.number_words_data(300, 100, seed=0)
    assert len(train) == 300 and len(held_out) == 100
    assert not {a for _, a in train} & {a for _, a in held_out}
    for question, answer in train + held_out:
        assert question == example.QUESTION.format(words=num2words(int(answer)))
        assert answer == str(int(answer))
    lengths = {len(answer) for _, answer in train}
    assert lengths == {1, 2, 3, 4, 5, 6}
    assert example.number_words_data(300, 100, seed=0) == (train, held_out)


class _CharTokenizer:
    def __call__(self, text):
        return np.array([ord(c) for c in text])


def test_loss_counts_the_answer_tokens_only(example, monkeypatch):
    monkeypatch.setattr(example, "SEQUENCE_LENGTH", 300)
    pairs = [("two", "2"), ("one hundred and five", "105")]
    x, y, weights = example.training_arrays(_CharTokenizer(), pairs, 9, 0)
    for row, (question, answer) in enumerate(pairs):
        prompt = [ord(c) for c in example.smollm2.chat_prompt(question)]
        full = prompt + [ord(c) for c in answer] + [9]
        n = len(full)
        np.testing.assert_array_equal(x["token_ids"][row, : n - 1], full[:-1])
        np.testing.assert_array_equal(y[row, : n - 1], full[1:])
        assert x["padding_mask"][row].sum() == n - 1
        # The targets weighted 1 are exactly the answer and the end token.
        np.testing.assert_array_equal(
            y[row][weights[row] == 1], [ord(c) for c in answer] + [9]
        )
    assert x["token_ids"].shape == (2, 300)


def test_too_long_an_example_is_refused_not_cut(example):
    with pytest.raises(ValueError, match="take 1[0-9][0-9] tokens"):
        example.training_arrays(_CharTokenizer(), [("two", "2")], 9, 0)


def test_output_folders_and_defaults(example):
    default = example.parse_args([])
    assert default.output_dir == "outputs/instruct_llm"
    assert (default.steps, default.batch_size, default.eval_prompts) == (60, 16, 100)
    quick = example.parse_args(["--quick"])
    assert quick.output_dir == "outputs/instruct_llm_quick"
    assert quick.steps < default.steps and quick.eval_prompts < 20
    assert example.parse_args(["--quick", "--output-dir", "x"]).output_dir == "x"


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    return env


def _run(*args):
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=1500,
        env=_env(),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("instruct") / "out"
    models = ROOT / "outputs" / "models"
    return output, _run("--quick", "--output-dir", output, "--model-dir", models)


@pytest.mark.large
@pytest.mark.tensorflow_only
def test_quick_run_writes_its_table_and_checks(quick_run, example):
    output, result = quick_run
    results = json.loads((output / "results.json").read_text())
    assert results["settings"]["quick"] is True
    stages = results["stages"]
    assert list(stages) == ["base", "fourierft", "lora", "checks"]
    assert stages["base"]["trainable_params"] == 0
    assert stages["fourierft"]["trainable_params"] == 60 * 1000
    assert stages["lora"]["trainable_params"] == LORA_PARAMS
    fourier_bytes = stages["fourierft"]["adapter_file_bytes"]
    assert 240_000 < fourier_bytes < 400_000  # 60,000 float32 + structure
    assert stages["lora"]["adapter_file_bytes"] > 5 * fourier_bytes
    for stage in ["base", "fourierft", "lora"]:
        row = stages[stage]
        assert 0.0 <= row["accuracy"] <= 1.0
        assert len(row["answers"]) == results["settings"]["eval_prompts"]
        assert 500 < row["peak_rss_mb"] < 20_000
    assert stages["fourierft"]["seconds_per_step"] > 0
    checks = stages["checks"]
    assert checks["reloaded_same"] and checks["merged_same"]
    assert checks["reloaded"] == checks["expected"] == checks["merged"]
    assert len(checks["expected"]) == 4
    table = (output / "results.md").read_text()
    assert table == example.markdown_table(results) + "\n"
    assert "| FourierFT n=1000 (query, value) |" in table
    assert "`--quick` smoke run" in table
    assert table in result.stdout + "\n"
    for k in range(1, 5):
        assert f"stage {k}/4 done:" in result.stdout
    assert "fourierft: step 4/4, loss" in result.stdout
    config = json.loads((output / "peft_adapter" / "adapter_config.json").read_text())
    # transformers' Llama module names, from the model family alone.
    expected = [
        f"model.layers.{i}.self_attn.{name}_proj" for i in range(30) for name in "qv"
    ]
    assert sorted(config["target_modules"]) == sorted(expected)


@pytest.mark.large
@pytest.mark.tensorflow_only
def test_rerun_resumes_from_the_output_folder(quick_run):
    output, _ = quick_run
    stamp = (output / "fourierft" / "result.json").stat().st_mtime_ns
    models = ROOT / "outputs" / "models"
    again = _run("--quick", "--output-dir", output, "--model-dir", models)
    for k, stage in enumerate(["base", "fourierft", "lora", "checks"], 1):
        assert f"stage {k}/4: {stage}: finished earlier" in again.stdout
    assert (output / "fourierft" / "result.json").stat().st_mtime_ns == stamp


@pytest.mark.large
@pytest.mark.tensorflow_only
def test_peft_export_generates_the_same_text_in_transformers(quick_run, example):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    output, _ = quick_run
    checks = json.loads((output / "results.json").read_text())["stages"]["checks"]
    path = example.smollm2.find_gguf()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        str(path.parent), gguf_file=path.name
    )
    prompt = example.smollm2.chat_prompt(checks["questions"][0])
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        base_logits = model(ids).logits.numpy()
    adapted = peft.PeftModel.from_pretrained(model, str(output / "peft_adapter"))
    texts = []
    with torch.no_grad():
        peft_logits = adapted(ids).logits.numpy()
        for question in checks["questions"]:
            prompt = example.smollm2.chat_prompt(question)
            ids_q = torch.tensor([tokenizer(prompt)["input_ids"]])
            out = adapted.generate(
                ids_q,
                max_new_tokens=example.MAX_NEW_TOKENS,
                do_sample=False,
                eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
            )
            texts.append(
                tokenizer.decode(out[0, ids_q.shape[1] :], skip_special_tokens=True)
                .split("<|im_end|>")[0]
                .strip()
            )
    # The adapter changes the logits, and PEFT applies it as Keras did.
    assert np.abs(peft_logits - base_logits).max() > 1e-2
    assert texts == checks["expected"]
