"""The README's main job: the guide's fine-tuning, over seeds and methods.

`python -m examples.sentiment` runs `examples/finetune_sentiment.py`'s
`fine_tune` for every method (head only, Keras LoRA, FourierFT, full) and
seed, writes each run's result as it ends (a stopped job resumes), and
summarizes them in a table and a plot. It also applies a trained adapter
(`--predict`), exports it for PEFT (`--export-peft`), trains data-parallel on
several devices (`--devices`) and publishes a full run's results into the
README (`--publish`). `python -m examples.sentiment --help` lists the
options.

Modules: `harness` (the command line and the runs), `devices` (several
devices), `report` (tables, plot, README), `startup` (what has to happen
before Keras is imported).
"""
