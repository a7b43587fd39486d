"""final/README.md: a Hugging Face model card for the trained model.

YAML front matter (what the hub reads: base_model, library_name, tags, datasets, metrics), then
the task, the data, the PEFT method and trainable parameters, the hyperparameters, the
validation and test metrics (from metrics.json), the loss plot (copied into final/ so the
folder stays self-contained), the command that reproduces the run, how to load the model, and
its intended use and limits. Written by the main process after metrics.json; `llmtune export`
copies it (export_card). Loads with `huggingface_hub.ModelCard.load`.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

import yaml

CARD = "README.md"
PLOT = "loss.png"   # the loss plot inside final/


def write_card(trainer, method, cfg, run_dir: Path) -> Path:
    """final/README.md (and final/loss.png when the run drew plots/); returns the card's path."""
    final = run_dir / "final"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    plot = run_dir / "plots" / PLOT
    if plot.is_file():
        shutil.copyfile(plot, final / PLOT)
    text = _front_matter(trainer.task, method, cfg, metrics) + "".join(
        section for section in (
            _intro(trainer.task, method, cfg, run_dir),
            _data(trainer, cfg),
            _training(trainer, method, cfg, metrics),
            _results(metrics),
            _curves(plot.is_file()),
            _reproduce(cfg),
            _usage(trainer.task, method, cfg.model.name_or_path, peft_format=(final / "adapter_config.json").is_file()),
            _limits(trainer, metrics),
        ) if section
    )
    (final / CARD).write_text(text)
    return final / CARD


def export_card(source: Path, folder: Path, merged: bool) -> bool:
    """Copy a run's model card (and its loss plot) into an export folder. A merged export is a
    plain transformers model now: library_name says so and the card notes it. False when
    `source` has no card (a checkpoint, or a run from before cards)."""
    card = source / CARD
    if not card.is_file():
        return False
    text = card.read_text()
    if merged:
        meta, body = _split(text)
        meta["library_name"] = "transformers"
        meta["tags"] = [*meta.get("tags", []), "merged"]
        text = _dump(meta) + "> Exported by `llmtune export`: the adapter is merged into its base weights, so this " \
            "folder loads with plain transformers (the loading code below for the adapter no longer applies).\n\n" + body
    (folder / CARD).write_text(text)
    if (source / PLOT).is_file():
        shutil.copyfile(source / PLOT, folder / PLOT)
    return True


def _split(text: str) -> tuple[dict, str]:
    _, meta, body = text.split("---\n", 2)
    return yaml.safe_load(meta) or {}, body.lstrip("\n")


def _dump(meta: dict) -> str:
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n"


def _front_matter(task, method, cfg, metrics: dict) -> str:
    meta: dict = {}
    base = cfg.model.name_or_path
    if base and not _is_local(base):  # the hub links base_model to a model id, not a local folder
        meta["base_model"] = base
    meta["library_name"] = "peft" if method.is_adapter else "transformers"
    meta["tags"] = ["llmtune", task.name, *([method.method] if method.method != "none" else [])]
    if cfg.data.get("name"):  # a hub dataset; files and built-in data are described in the body
        meta["datasets"] = [cfg.data.name]
    meta["metrics"] = _metric_names(metrics)
    return _dump(meta)


def _is_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists()


def _metric_names(metrics: dict) -> list[str]:
    names: list[str] = []
    for split in ("validation", "test"):
        names += [k for k in metrics.get(split) or {} if k not in names and not k.endswith("_stderr")]
    return names


def _intro(task, method, cfg, run_dir: Path) -> str:
    base = f"`{cfg.model.name_or_path}`" if cfg.model.name_or_path else f"a {cfg.model.config.model_type} model built from scratch (model.config)"
    how = f"peft={method.method}" + (" (an adapter on the frozen base model)" if method.is_adapter else "")
    return (f"# {run_dir.name}\n\n"
            f"A `{task.name}` model ({task.auto_class}) trained with llmtune "
            f"(`llmtune {cfg.command}`) from {base}, as {how}.\n"
            + (f"\nLabels: {', '.join(map(str, task.labels))}\n" if task.labels else ""))


def _data(trainer, cfg) -> str:
    data = cfg.data
    if data.get("train_file"):
        source = ", ".join(f"{split}: `{Path(data[f'{split}_file']).name}`" for split in ("train", "validation", "test") if data.get(f"{split}_file"))
    elif data.get("name"):
        source = f"the hub dataset `{data.name}`" + (f" ({data.config_name})" if data.get("config_name") else "")
    else:
        source = f"llmtune's built-in `{trainer.task.name}` sample data (generated, for trying the tool out)"
    sizes = ", ".join(f"{split} {len(trainer.datasets[split]):,}" for split in ("train", "validation", "test") if split in trainer.datasets)
    return f"\n## Data\n\nFrom {source}. Examples after preprocessing: {sizes}.\n"


def _training(trainer, method, cfg, metrics: dict) -> str:
    from omegaconf import OmegaConf

    params = list(trainer.model.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    peft = {k: v for k, v in (OmegaConf.to_container(cfg.peft, resolve=True) or {}).items() if not k.startswith("_")}
    group = trainer.optimizer.param_groups[0]
    t = cfg.trainer
    rows = {
        "PEFT method": method.method + (f" ({', '.join(f'{k}={v}' for k, v in peft.items())})" if peft else ""),
        "trainable parameters": f"{trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)",
        "steps": metrics.get("train", {}).get("steps"),
        "batch size": f"{t.batch_size} × grad_accum {t.grad_accum} × {trainer.accelerator.num_processes} process(es)",
        "learning rate": f"{group.get('initial_lr', group['lr']):g}",
        "optimizer": str(cfg.optimizer.get("_target_", "")).rsplit(".", 1)[-1],
        "scheduler": cfg.scheduler.get("name") or str(cfg.scheduler.get("_target_", "")),
        "max_length": trainer.task.max_length,
        "precision": t.precision,
        "seed": cfg.seed,
        "final training loss": _fmt(metrics.get("train", {}).get("loss")),
    }
    table = "\n".join(f"| {k} | {v} |" for k, v in rows.items() if v is not None)
    return f"\n## Training\n\n| setting | value |\n|---|---|\n{table}\n"


def _results(metrics: dict) -> str:
    splits = [s for s in ("validation", "test") if metrics.get(s)]
    if not splits:
        return ""
    main = metrics.get("main_metric")
    names = sorted(_metric_names(metrics), key=lambda k: k != main)
    rows = "\n".join(f"| {k}{' (main)' if k == main else ''} | " + " | ".join(_fmt(metrics[s].get(k)) for s in splits) + " |" for k in names)
    best = metrics.get("best") or {}
    shipped = (metrics.get("weights") or {}).get("shipped")
    note = f"\nBest validation {main}: {_fmt(best.get(main))} at step {best.get('step')}." if best.get("step") is not None else ""
    note += f" Shipped weights: {shipped} ({metrics['weights'].get('reason')})." if shipped else ""
    return f"\n## Results\n\n| metric | {' | '.join(splits)} |\n|---|{'---|' * len(splits)}\n{rows}\n{note}\n"


def _curves(has_plot: bool) -> str:
    if not has_plot:
        return ""
    return f"\n## Training curves\n\n![training and validation loss]({PLOT})\n"


def _reproduce(cfg) -> str:
    return f"\n## Reproduce\n\n```bash\n{command_line(cfg)}\n```\n"


def command_line(cfg) -> str:
    """The command that made this run: the verb and this job's own overrides (a sweep's job
    gets its values, not the sweep's), or the process's arguments outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        args = list(HydraConfig.get().overrides.task)
        return " ".join(["llmtune", str(cfg.command), *map(shlex.quote, args)])
    return " ".join(["llmtune", *map(shlex.quote, sys.argv[1:])])


def _usage(task, method, base: str | None, peft_format: bool = True) -> str:
    if method.is_adapter and not peft_format:  # llmtune's own adapter files (peft=adapter): llmtune rebuilds base + adapters
        return (f"\n## Use\n\npeft={method.method} keeps its weights in llmtune's format (adapter.safetensors, adapter.json): "
                "`llmtune predict path/to/final`, `llmtune evaluate path/to/final`, `llmtune serve path/to/final` load it; "
                "`llmtune export path/to/final output=DIR` writes the same files (nothing is merged).\n")
    if method.is_adapter:  # as the README's tested snippet: the base built with final/'s config (label maps)
        code = (f"from peft import PeftConfig, PeftModel\nfrom transformers import AutoConfig, AutoTokenizer, {task.auto_class}\n\n"
                'final = "path/to/final"\n'
                "base_path = PeftConfig.from_pretrained(final).base_model_name_or_path\n"
                f"base = {task.auto_class}.from_pretrained(base_path, config=AutoConfig.from_pretrained(final))\n"
                "model = PeftModel.from_pretrained(base, final)\n"
                "tokenizer = AutoTokenizer.from_pretrained(final)\n")
        if not base:
            code += "# The base was built from scratch and is saved nowhere: use `llmtune predict`, or export with merge=true.\n"
    else:
        code = (f"from transformers import AutoTokenizer, {task.auto_class}\n\n"
                f'model = {task.auto_class}.from_pretrained("path/to/final")\n'
                'tokenizer = AutoTokenizer.from_pretrained("path/to/final")\n')
    return (f"\n## Use\n\n```python\n{code}```\n\nOr with llmtune: `llmtune predict path/to/final`, "
            "`llmtune evaluate path/to/final`, `llmtune serve path/to/final`; "
            "`llmtune export path/to/final output=DIR` writes a plain transformers folder.\n")


def _limits(trainer, metrics: dict) -> str:
    n_val = len(trainer.datasets["validation"]) if "validation" in trainer.datasets else 0
    scored = f"on {n_val:,} validation examples" + (" and the test split above" if metrics.get("test") else "")
    return ("\n## Intended use and limits\n\n"
            f"Intended for the `{trainer.task.name}` task on text like the training data above. It was scored only "
            f"{scored}; its behaviour on other domains, languages or label sets is unmeasured, and it "
            "inherits the biases and limits of its base model and training data. Check it on your own "
            "data before relying on it.\n")


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)
