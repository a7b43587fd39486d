"""`llmtune export`: a trained run as a plain Hugging Face model folder.

The folder loads with `AutoModelFor<task>.from_pretrained(DIR)` and `transformers.pipeline(...,
model=DIR)` alone: a LoRA adapter is merged into its base (also a base built from scratch,
which load_trained rebuilds), config.json carries the label maps, the tokenizer is next to the
weights (safetensors). merge=false keeps an adapter as it is (PEFT format) instead.

llmtune.json goes along: it records where the model came from, and makes the folder usable
by `llmtune predict/evaluate/serve` too (a merged export is described as a full model).
The folder is written under a temporary name and renamed when complete; the run is only read.
"""

from __future__ import annotations

from pathlib import Path

from llmtune.commands._args import describe

HELP = "a trained run as a plain Hugging Face model folder (LoRA merged, tokenizer, label maps)"
KEYS = {
    "output": (Path, None, "the folder to write; it must not exist or be empty (see overwrite)"),
    "merge": (bool, True, "fold a LoRA adapter into the base weights; false: write the adapter as is (PEFT format). "
                          "Prompt learning and peft=adapter have nothing to fold in: always written as final/ holds them"),
    "dtype": (("auto", "float32", "bf16", "fp16"), "auto", "dtype of the saved weights; auto keeps the trained ones"),
    "overwrite": (bool, False, "replace what the output folder holds"),
}
USAGE = f"""\
usage: llmtune export PATH output=DIR [key=value ...]

PATH is a run's final/, a run directory or a checkpoints/step-N folder. DIR gets a model that
plain transformers loads (config.json with id2label/label2id, model.safetensors, the tokenizer,
a README.md: the run's model card), plus llmtune.json (provenance; `llmtune predict DIR` works on it too).

arguments:
{describe(KEYS)}

examples:
  llmtune export runs/ner-lora/final output=merged/
  llmtune export runs/ner-lora/final output=adapter/ merge=false
  llmtune export runs/sft/final output=sft-bf16/ dtype=bf16
"""
DTYPES = {"float32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def main(argv: list[str]) -> None:
    from llmtune.commands._args import parse
    from llmtune.errors import UserError
    from llmtune.trained import load_trained, locate
    from llmtune.ui.console import setup_logging

    args = parse(argv, KEYS, verb="export", positional="PATH")
    if args.output is None:
        raise UserError("export: output=DIR is required: the folder to write the model to; see `llmtune export --help`.")
    weights, _, run_dir = locate(args.path)
    check_output(args.output, args.overwrite, [p for p in (weights, run_dir) if p is not None])
    setup_logging(is_main=True)
    trained = load_trained(args.path, "cpu")
    written = write_export(trained, args.output, merge=args.merge, dtype=args.dtype)
    print(written)


def check_output(output: Path, overwrite: bool, protected: list[Path]) -> None:
    """Refuse an output that is a file, overlaps the run being exported (so overwrite=true can
    never delete a run), or holds something unless overwrite=true."""
    from llmtune.errors import UserError

    out = output.expanduser().resolve()
    for path in map(Path.resolve, protected):
        if out.is_relative_to(path) or path.is_relative_to(out):
            raise UserError(f"export: output={output} overlaps the run being exported ({path}); name a folder outside it.")
    if out.exists() and not out.is_dir():
        raise UserError(f"export: output={output} is a file; name a folder.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"export: output={output} exists and is not empty; name a new folder, or add overwrite=true to replace it.")


def write_export(trained, output: Path, *, merge: bool = True, dtype: str = "auto") -> str:
    """Write the export to `output` (complete or not at all); returns the one-line summary."""
    import os
    import shutil

    out = output.expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir()
        summary = _save(trained, partial, merge, dtype, output)
        if out.exists():  # empty, or overwrite=true: moved aside until the new one is in place
            os.replace(out, old)
        os.replace(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return summary


def _save(trained, folder: Path, merge: bool, dtype: str, shown: Path) -> str:
    import torch

    task, method, model = trained.task, trained.method, trained.model
    # merged() is None for methods with nothing to fold into the weights (prompt learning,
    # bottleneck adapters): those are written as they are, in the method's own format.
    merged = method.merged(model) if method.is_adapter and merge else None
    adapter = method.is_adapter and merged is None
    model = merged if merged is not None else model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    # The task's label maps, also for a checkpoint whose model config predates them.
    labels = {k: v for k, v in task.model_kwargs().items() if k in ("id2label", "label2id")}
    base.config.update(labels)
    if dtype != "auto":
        model.to(getattr(torch, DTYPES[dtype]))
    if adapter:  # as final/ holds it (PEFT: adapter_model + adapter_config)
        method.save(model, folder)
    else:
        model.save_pretrained(folder)  # safetensors
    if adapter:  # the base's config, with the label maps, as final/ has it
        base.config.save_pretrained(folder)
    trained.tokenizer.save_pretrained(folder)
    _write_info(trained, folder, plain=not adapter, dtype=dtype)
    from llmtune.modelcard import export_card

    export_card(trained.path, folder, merged=method.is_adapter and not adapter)  # the run's model card, when it has one
    saved = str(next(model.parameters()).dtype).removeprefix("torch.")
    if adapter:
        return _adapter_summary(trained, folder, shown, saved, mergeable=not merge)
    if not (folder / "README.md").exists():  # a checkpoint, or a run from before model cards
        _write_card(trained, folder, saved)
    how = "merged into its base" if method.is_adapter else "full model"
    return f"exported {trained.describe()} to {shown} ({how}, {saved}); load it with transformers.{task.auto_class}.from_pretrained({str(shown)!r})."


def _adapter_summary(trained, folder: Path, shown: Path, dtype: str, mergeable: bool) -> str:
    """The line for an export that keeps the method as it is: merge=false, or a method with
    nothing to merge (`mergeable` False: merged() said so)."""
    method, base = trained.method, trained.model
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    peft_format = (folder / "adapter_config.json").is_file()
    kind = "PEFT format" if peft_format else "llmtune format"
    state = "not merged" if mergeable else f"not merged: peft={method.method} has nothing to fold into the weights"
    if not base.name_or_path:
        note = " Its base model was built from scratch and is not saved anywhere: only `llmtune predict` can rebuild it" + ("; use merge=true for a standalone model." if mergeable else ".")
    elif peft_format:
        note = f" Load it with peft.PeftModel.from_pretrained(transformers.{trained.task.auto_class}.from_pretrained({base.name_or_path!r}), {str(shown)!r})."
    else:
        note = f" Load it with `llmtune predict {shown}` or `llmtune evaluate {shown}`."
    return f"exported {trained.describe()} to {shown} as an adapter ({kind}, {state}, {dtype}).{note}"


def _write_info(trained, folder: Path, plain: bool, dtype: str) -> None:
    """llmtune.json: the run's own (a checkpoint's rebuilt from its config), described as a full
    model when the weights are now plain, plus where it came from."""
    import json

    from omegaconf import OmegaConf

    from llmtune.paths import conf_dir
    from llmtune.trained import INFO

    if (trained.path / INFO).is_file():
        info = json.loads((trained.path / INFO).read_text())
    else:  # a checkpoint: the same fields final/ records, from the run's config
        cfg, task = trained.cfg, trained.task
        info = {"task": task.name, "auto_class": task.auto_class, **task.state(), "peft": trained.method.method,
                "base_model": cfg.model.name_or_path, "main_metric": task.main_metric,
                **{f"{key}_config": OmegaConf.to_container(cfg[key], resolve=True) for key in ("task", "peft", "model")},
                "seed": cfg.seed}
    info["exported_from"] = {"path": str(trained.path), "kind": trained.kind, "peft": trained.method.method, "merged": plain and trained.method.is_adapter, "dtype": dtype}
    if plain:  # what loads it now is the full-model method
        info["peft"], info["peft_config"] = "none", OmegaConf.to_container(OmegaConf.load(conf_dir() / "peft" / "none.yaml"))
        info["base_model_path"] = None
    (folder / INFO).write_text(json.dumps(info, indent=1))


def _write_card(trained, folder: Path, dtype: str) -> None:
    task = trained.task
    labels = f"\nLabels: {', '.join(task.labels)}\n" if task.labels else ""
    (folder / "README.md").write_text(
        f"# {task.name} model exported by llmtune\n\n"
        f"From `{trained.path}` ({trained.kind}, peft={trained.method.method}"
        f"{', merged' if trained.method.is_adapter else ''}), weights in {dtype}.\n{labels}\n"
        "```python\n"
        f"from transformers import {task.auto_class}, AutoTokenizer\n\n"
        f'model = {task.auto_class}.from_pretrained("path/to/this/folder")\n'
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")\n'
        "```\n"
    )
