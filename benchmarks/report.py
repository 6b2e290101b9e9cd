"""Renders the benchmark JSON files of a folder as Markdown tables.

Usage:
    python benchmarks/report.py RESULTS_FOLDER > tables.md

Reads `train_<backend>.json`, `train_torch_peft.json`,
`train_torch_peft_no_dropout.json`, `adapter_layer_<backend>.json`,
`micro_<backend>.json` and `inference_<backend>.json` where present. The
torch row of the training-step table comes from the run with PEFT when there
is one (all six methods interleaved in one run).
"""

import json
import pathlib
import sys

BACKENDS = ("tensorflow", "jax", "torch")


def paired(data, name):
    """`median [q1-q3]` of the per-repeat ratios, or "-" for older files."""
    value = data.get(f"{name}_paired")
    if value is None:
        return "-"
    return f"{value['median']:.3f} [{value['q1']:.3f}-{value['q3']:.3f}]"


def load(folder, name):
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def train_table(folder):
    lines = [
        "| backend | frozen | Keras LoRA r=8 | FourierFT n=1000 | full "
        "| FourierFT / LoRA step | same, per-repeat pairs "
        "| FourierFT / LoRA peak memory |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for backend in BACKENDS:
        data = load(folder, f"train_{backend}")
        if backend == "torch":
            data = load(folder, "train_torch_peft") or data
        if data is None:
            continue
        r = data["results"]
        lines.append(
            f"| {backend} | "
            + " | ".join(
                f"{r[m]['median_step_ms']:.0f} ms / {r[m]['peak_memory_mb']:.0f} MB"
                for m in ("frozen", "lora", "fourierft", "full")
            )
            + f" | **{data['fourierft_over_lora']:.3f}** "
            f"| {paired(data, 'fourierft_over_lora')} "
            f"| {data.get('fourierft_memory_over_lora', float('nan')):.3f} |"
        )
    return "\n".join(lines)


PEFT_NAMES = {
    "frozen": "keras-fourierft: frozen",
    "lora": "Keras LoRA r=8",
    "fourierft": "keras-fourierft FourierFT n=1000",
    "full": "Keras full",
    "peft_lora": "HF PEFT LoRA r=8",
    "peft_fourierft": "HF PEFT FourierFT n=1000",
}


def peft_table(folder):
    data = load(folder, "train_torch_peft")
    if data is None:
        return ""
    r = data["results"]
    no_dropout = load(folder, "train_torch_peft_no_dropout")
    lines = [
        "| method (torch, one run) | step | peak RSS | step, dropout 0 | trainable |",
        "|---|---|---|---|---|",
    ]
    for key, name in PEFT_NAMES.items():
        row = r[key]
        other = "-"
        if no_dropout is not None:
            other = f"{no_dropout['results'][key]['median_step_ms']:.0f} ms"
        lines.append(
            f"| {name} | {row['median_step_ms']:.0f} ms "
            f"| {row.get('peak_memory_mb', 0):.0f} MB | {other} "
            f"| {row['trainable_params']:,} |"
        )
    lines.append("")
    for label, run in (("BERT dropout 0.1", data), ("dropout 0", no_dropout)):
        if run is None:
            continue
        lines.append(
            f"- {label}: keras-fourierft FourierFT / PEFT FourierFT "
            f"**{run['fourierft_over_peft_fourierft']:.3f}** (pairs: "
            f"{paired(run, 'fourierft_over_peft_fourierft')}); keras-fourierft "
            f"FourierFT / Keras LoRA {run['fourierft_over_lora']:.3f}; PEFT "
            f"FourierFT / PEFT LoRA {run['peft_fourierft_over_peft_lora']:.3f}; "
            f"Keras LoRA / PEFT LoRA (the base models) "
            f"{run['lora_over_peft_lora']:.3f}."
        )
    return "\n".join(lines)


def adapter_layer_table(folder):
    lines = [
        "| backend | d, tokens | frozen | Keras LoRA r=8 | FourierFT n=1000 "
        "| PEFT LoRA r=8 | PEFT FourierFT | FourierFT / LoRA "
        "| FourierFT / PEFT FourierFT |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for backend in BACKENDS:
        data = load(folder, f"adapter_layer_{backend}")
        if data is None:
            continue
        for case in data["cases"]:
            m = case["median_ms"]
            cells = [
                f"{m[key]:.1f} ms" if key in m else "-"
                for key in ("frozen", "lora", "fourierft", "peft_lora")
            ]
            cells.append(
                f"{m['peft_fourierft']:.1f} ms" if "peft_fourierft" in m else "-"
            )
            versus_peft = case.get("fourierft_over_peft_fourierft")
            versus_peft = f"**{versus_peft:.3f}**" if versus_peft else "-"
            lines.append(
                f"| {backend} | {case['hidden']}, {case['tokens']:,} | "
                + " | ".join(cells)
                + f" | **{case['fourierft_over_lora']:.3f}** | {versus_peft} |"
            )
    return "\n".join(lines) if len(lines) > 2 else ""


def inference_table(folder):
    lines = [
        "| backend | plain | FourierFT unmerged | FourierFT merged "
        "| merged / plain | unmerged / merged |",
        "|---|---|---|---|---|---|",
    ]
    for backend in BACKENDS:
        data = load(folder, f"inference_{backend}")
        if data is None:
            continue
        m = data["median_predict_ms"]
        lines.append(
            f"| {backend} | {m['plain']:.0f} ms | {m['fourierft_unmerged']:.0f} ms "
            f"| {m['fourierft_merged']:.0f} ms | **{data['merged_over_plain']:.3f}** "
            f"| {data['unmerged_over_merged']:.3f} |"
        )
    return "\n".join(lines)


def micro_tables(folder):
    lines = [
        "| backend | d1 x d2 | n | FFT fwd+bwd | direct fwd+bwd | FFT rel. error "
        "| direct rel. error |",
        "|---|---|---|---|---|---|---|",
    ]
    extra = []
    for backend in BACKENDS:
        data = load(folder, f"micro_{backend}")
        if data is None:
            continue
        for case in data["delta_w"]:
            direct = case.get("direct_forward_backward_ms")
            direct = f"{direct:.2f} ms" if direct is not None else "not run"
            error = case.get("direct_relative_error")
            error = f"{error:.1e}" if error is not None else "-"
            lines.append(
                f"| {backend} | {case['shape'][0]}x{case['shape'][1]} | {case['n']:,} "
                f"| {case['fft_forward_backward_ms']:.2f} ms | {direct} "
                f"| {case['fft_relative_error']:.1e} | {error} |"
            )
        files = data["adapter_files"]
        fourier = f"{files['fourierft_weights_h5_bytes']:,} B"
        lora = f"{files['lora_r8_lora_h5_bytes']:,} B"
        full = f"{files['full_model_weights_h5_bytes']:,} B"
        locations = data["locations_4096x4096_n1000_ms"]
        extra.append(
            f"- {backend}: locations for 4096x4096, n=1000: {locations:.2f} ms; "
            f"adapter files (MiniLM-L6 query+value): FourierFT {fourier} vs "
            f"Keras LoRA r=8 `.lora.h5` {lora} (ratio "
            f"{files['fourierft_over_lora']:.3f}); full model {full}"
        )
    return "\n".join(lines) + "\n\n" + "\n".join(extra)


def main():
    folder = pathlib.Path(sys.argv[1])
    sections = [
        ("Training step", train_table(folder)),
        ("Side by side with HF PEFT (torch)", peft_table(folder)),
        ("One adapted layer, forward + backward", adapter_layer_table(folder)),
        ("Inference", inference_table(folder)),
        ("delta_W rebuild, locations, adapter files", micro_tables(folder)),
    ]
    for title, body in sections:
        if body:
            print(f"### {title}\n\n{body}\n")


if __name__ == "__main__":
    main()
