"""A trained run, loaded for the verbs that use one (evaluate, predict, export, serve).

PATH may be a run's `final/` folder, a run directory (its final/, or its newest checkpoint when
it has none yet), or one checkpoint (`checkpoints/step-N`). Everything is rebuilt through the
same code as training: the task from its config and saved state, the PEFT method's own `load`,
and for a checkpoint the model of `builders.build_model` with the checkpoint's weights.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, read_write

from llmtune.errors import UserError

log = logging.getLogger("llmtune")
INFO = "llmtune.json"


@dataclass
class TrainedRun:
    path: Path                 # the folder the weights come from (a final/ or a checkpoint)
    kind: str                  # "final" or "checkpoint"
    run_dir: Path | None       # the run it belongs to, when known
    cfg: DictConfig | None     # the run's resolved config (config.yaml), when found
    task: object               # llmtune.tasks.base.Task, with its saved state (labels)
    method: object             # the PEFT method (llmtune/peft)
    tokenizer: object
    model: object              # in eval mode

    def describe(self) -> str:
        return f"{self.task.name} ({self.method.method}) from {self.path}"


def locate(path: str | Path) -> tuple[Path, str, Path | None]:
    """(weights folder, kind, run directory) for what the user named; one line if it is none."""
    from llmtune.engine.checkpoint import list_checkpoints

    p = Path(str(path)).expanduser().resolve()
    if not p.exists():
        raise UserError(f"{path}: no such file or directory; name a run directory, its final/ or a checkpoints/step-N folder.")
    if (p / INFO).is_file():
        run = p.parent if (p.parent / "config.yaml").is_file() else None
        return p, "final", run
    if (p / "state.json").is_file():
        run = p.parent.parent if (p.parent.parent / "config.yaml").is_file() else None
        return p, "checkpoint", run
    if (p / "final" / INFO).is_file():
        return p / "final", "final", p
    checkpoints = list_checkpoints(p / "checkpoints") if (p / "checkpoints").is_dir() else []
    if checkpoints:
        log.info("%s has no final/ yet: using its newest checkpoint, %s", p, checkpoints[-1].name)
        return checkpoints[-1], "checkpoint", p
    raise UserError(f"{path}: not a trained run (no {INFO}, final/ or checkpoints/step-N in it); name a run directory, its final/ or a checkpoint.")


def _run_config(run_dir: Path | None) -> DictConfig | None:
    if run_dir is None or not (run_dir / "config.yaml").is_file():
        return None
    return OmegaConf.load(run_dir / "config.yaml")


def _build(node, what: str, where: Path):
    from hydra.utils import instantiate

    try:
        return instantiate(node)
    except Exception as exc:  # noqa: BLE001 -- a config written by another llmtune version: say which
        raise UserError(f"{where}: cannot rebuild its {what} ({str(exc).strip().splitlines()[0]}); was it written by another llmtune version?") from None


def resolve_device(choice: str, verb: str) -> str:
    """The verbs' device=auto|cpu|cuda as a torch device: auto is cuda when a GPU is visible."""
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{verb}: device=cuda, but torch sees no CUDA GPU here; use device=cpu (or auto).")
    return choice


def load_trained(path: str | Path, device: str = "cpu") -> TrainedRun:
    """Load what PATH names, ready to predict or evaluate on `device`."""
    import transformers

    from llmtune.builders import bitsandbytes_hidden

    weights, kind, run_dir = locate(path)
    cfg = _run_config(run_dir)
    with bitsandbytes_hidden(cfg or _saved_config(weights, kind)):
        if kind == "final":
            info = json.loads((weights / INFO).read_text())
            task_node = info.get("task_config") or (cfg.task if cfg is not None else None)
            peft_node = info.get("peft_config") or (cfg.peft if cfg is not None else None)
            if task_node is None or peft_node is None:
                raise UserError(f"{weights}/{INFO} does not say how the task was configured (written by an older llmtune); retrain, or keep final/ inside its run directory.")
            task = _build(task_node, "task", weights)
            task.load_state(info)
            method = _build(peft_node, "PEFT method", weights)
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(weights))
            base = _scratch_base(info, task, tokenizer) if method.is_adapter else None
            model = method.load(str(weights), task.model_class(), info, base=base)
        else:
            task, method, tokenizer, model = _from_checkpoint(weights, cfg)
    model.to(device).eval()
    return TrainedRun(weights, kind, run_dir, cfg, task, method, tokenizer, model)


def _saved_config(weights: Path, kind: str) -> DictConfig:
    """A final/ outside its run: the groups its llmtune.json records (the PEFT method may need
    bitsandbytes kept importable: peft=qlora)."""
    info = json.loads((weights / INFO).read_text()) if kind == "final" else {}
    return OmegaConf.create({"peft": info.get("peft_config") or {}})


def _scratch_base(info: dict, task, tokenizer):
    """An adapter's base built from scratch (or composed from two checkpoints) is not saved:
    rebuild it as training built it (its model config and seed give the same initial weights,
    as a resume relies on too)."""
    from accelerate.utils import set_seed

    from llmtune.models import load_model, rebuilt_base

    model_cfg = info.get("model_config")
    if info.get("base_model_path") or not rebuilt_base(model_cfg):
        return None
    set_seed(int(info.get("seed", 0)))
    return load_model(OmegaConf.create(model_cfg), task, tokenizer, task.model_kwargs())


def _from_checkpoint(checkpoint: Path, cfg: DictConfig | None):
    """A checkpoint: the run's model rebuilt from its config, then the checkpoint's weights.
    The task's state comes from the run's final/ when there is one, else from its data (as in
    training); the tokenizer from final/, else from the model config."""
    import transformers
    from accelerate import Accelerator

    from llmtune.builders import build_model, build_task
    from llmtune.data.load import load_raw
    from llmtune.engine.checkpoint import load_weights
    from llmtune.tokenization import load_tokenizer

    if cfg is None:
        raise UserError(f"{checkpoint}: a checkpoint is loaded with its run's config.yaml, two folders up; keep it inside its run directory.")
    task = build_task(cfg)
    final = checkpoint.parent.parent / "final"
    if (final / INFO).is_file():
        task.load_state(json.loads((final / INFO).read_text()))
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(final))
    else:
        raw, _ = load_raw(cfg.data, task, cfg.seed)
        task.setup(raw)
        if not (cfg.model.tokenizer or cfg.model.name_or_path):
            raise UserError(f"{checkpoint}: its run trained a tokenizer, which is saved in final/ at the end of the run; this run has no final/ yet, so wait for it (or resume it).")
        tokenizer = load_tokenizer(cfg.model, task, [])
    with read_write(cfg):
        cfg.trainer.gradient_checkpointing = False
        cfg.trainer.compile = False
    model, method = build_model(cfg, task, tokenizer)
    load_weights(checkpoint, model, Accelerator(cpu=True))
    return task, method, tokenizer, model
