"""Experiment trackers (the `tracker` config group, conf/tracker/): one callback that feeds
every selected tracker through Accelerate's tracking API (Accelerator(log_with=...) is set by
builders.build_accelerator from the same group).

What each tracker needs lives in its YAML, under tracker.<name> (the name Accelerate knows it
by, and the llmtune extra that installs it):
    init          arguments for Accelerate's tracker (wandb.init, trackio.init, SummaryWriter...)
    run_name_arg  the init argument that names the run, if the tracker has one
    env           environment variables the library reads (MLFLOW_TRACKING_URI)
    logging_dir   where trackers that write files of their own put them (TensorBoard)

Logged: the resolved config (config.yaml) flattened to dotted keys as hyperparameters, every
train_log.jsonl record (train/<key>, <split>/<key>) at its step, and metrics.json's numbers
(final/<key>) at the last step. Only the main process logs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from llmtune.engine.callbacks import Callback

log = logging.getLogger("llmtune")
_NOT_METRICS = ("type", "split", "step", "total_steps")


class TrackerCallback(Callback):
    def __init__(self, run_dir: Path, is_main: bool, trackers, project: str = "llmtune") -> None:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(trackers, DictConfig):
            trackers = OmegaConf.to_container(trackers, resolve=True)
        self.trackers = {name: dict(node or {}) for name, node in (trackers or {}).items()}
        self.run_dir, self.project = Path(run_dir), project
        self.enabled = is_main and bool(self.trackers)
        self.accelerator = None
        self.started = False
        self.step = 0

    def on_setup(self, trainer):
        self.accelerator = trainer.accelerator

    def on_train_start(self, state, total_steps):
        self.step = state.step
        if not self.enabled or self.started:
            return
        for node in self.trackers.values():
            os.environ.update({str(k): str(v) for k, v in (node.get("env") or {}).items()})
            if node.get("logging_dir"):
                self.accelerator.project_configuration.logging_dir = str(node["logging_dir"])
        name = run_name(self.run_dir)
        init_kwargs = {
            tracker: {**(node.get("init") or {}), **({node["run_name_arg"]: name} if node.get("run_name_arg") else {})}
            for tracker, node in self.trackers.items()
        }
        self.accelerator.init_trackers(self.project, config=hyperparameters(self.run_dir / "config.yaml"), init_kwargs=init_kwargs)
        self.started = True
        log.info("trackers: %s (run %s)", ", ".join(self.trackers), name)

    def on_log(self, state, record):
        self._log(record, state.step)

    def on_evaluate(self, state, record):
        self._log(record, state.step)

    def on_train_end(self, state):
        self.step = state.step

    def on_metrics(self, metrics):
        if self.started:
            self.accelerator.log(flatten(metrics, "final/", sep="/", numbers_only=True), step=self.step)

    def _log(self, record: dict, step: int) -> None:
        if not self.started:
            return
        prefix = record.get("split") or record.get("type") or "train"
        values = {f"{prefix}/{k}": v for k, v in record.items() if k not in _NOT_METRICS and _is_number(v)}
        self.accelerator.log(values, step=step)


def run_name(run_dir: Path) -> str:
    """The run directory's name; in a multirun sweep (where it is the job number), followed by
    the job's overrides of the swept keys: "3 optimizer.lr=1e-4 peft=lora"."""
    varying = _swept_overrides()
    return " ".join([Path(run_dir).name, *varying])


def _swept_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return []
    hydra_cfg = HydraConfig.get()
    # Swept keys: comma lists and ranges on the command line, and the sweeper's own params (Optuna).
    keys = set((hydra_cfg.sweeper.get("params") or {}).keys())
    try:
        parsed = OverridesParser.create().parse_overrides([a for a in sys.argv[1:] if not a.startswith("-")])
        keys |= {ov.key_or_group for ov in parsed if ov.is_sweep_override()}
    except HydraException:
        pass  # not our command line (a programmatic launch): the sweeper's params still count
    return [o for o in hydra_cfg.overrides.task if o.split("=", 1)[0].lstrip("+~") in keys]


def hyperparameters(config_yaml: Path) -> dict | None:
    """The run's resolved config as flat `a.b.c: scalar` pairs (lists as JSON); None when the
    run has no config.yaml (a trainer built without the job)."""
    from omegaconf import OmegaConf

    if not config_yaml.is_file():
        return None
    return flatten(OmegaConf.to_container(OmegaConf.load(config_yaml), resolve=False))


def flatten(tree: dict, prefix: str = "", sep: str = ".", numbers_only: bool = False) -> dict:
    """Nested mappings to one level of `prefix + a.b.c` keys; lists become JSON text, None "null".
    numbers_only keeps int/float leaves only (what metric loggers accept)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}{sep}", sep, numbers_only))
        elif numbers_only:
            if _is_number(value):
                flat[name] = value
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple)) else ("null" if value is None else value)
    return flat


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
