"""Renders the benchmark JSON files of a folder as Markdown tables.

Usage:
    python benchmarks/report.py RESULTS_FOLDER > tables.md

Reads `train_<backend>.json`, `train_torch_peft.json`, `micro_<backend>.json`
and `inference_<backend>.json` where present.
"""

import json
import pathlib
import sys

BACKENDS = ("tensorflow", "jax", "torch")


def load(folder, name):
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def train_table(folder):
    lines = [
        "| backend | frozen | Keras LoRA r=8 | FourierFT n=1000 | full "
        "| FourierFT / LoRA step | FourierFT / LoRA peak memory |",
        "|---|---|---|---|---|---|---|",
    ]
    for backend in BACKENDS:
        data = load(folder, f"train_{backend}")
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
            f"| {data.get('fourierft_memory_over_lora', float('nan')):.3f} |"
        )
    return "\n".join(lines)


def peft_table(folder):
    data = load(folder, "train_torch_peft")
    if data is None:
        return ""
    r = data["results"]
    names = {
        "frozen": "keras-fourierft: frozen",
        "lora": "Keras LoRA r=8",
        "fourierft": "keras-fourierft FourierFT n=1000",
        "full": "Keras full",
        "peft_lora": "HF PEFT LoRA r=8",
        "peft_fourierft": "HF PEFT FourierFT n=1000",
    }
    lines = [
        "| method (torch, one run) | step | peak RSS | trainable |",
        "|---|---|---|---|",
    ]
    for key, name in names.items():
        row = r[key]
        lines.append(
            f"| {name} | {row['median_step_ms']:.0f} ms "
            f"| {row.get('peak_memory_mb', 0):.0f} MB | {row['trainable_params']:,} |"
        )
    lines.append("")
    lines.append(
        f"keras-fourierft FourierFT / PEFT FourierFT: "
        f"**{data['fourierft_over_peft_fourierft']:.3f}**; PEFT FourierFT / PEFT "
        f"LoRA: {data['peft_fourierft_over_peft_lora']:.3f}; keras-fourierft "
        f"FourierFT / Keras LoRA: {data['fourierft_over_lora']:.3f}."
    )
    return "\n".join(lines)


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
        ("Inference", inference_table(folder)),
        ("delta_W rebuild, locations, adapter files", micro_tables(folder)),
    ]
    for title, body in sections:
        if body:
            print(f"### {title}\n\n{body}\n")


if __name__ == "__main__":
    main()
