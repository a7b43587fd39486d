"""Config checks that run before anything heavy: overrides, keys, types, files, cross-field rules.

`preflight` is called by the CLI before Hydra starts the job, so a typo is reported in one line
before an output directory is created or a model is loaded. `validate` holds the rules that need
the composed config and is also called by the job (it is cheap), so programmatic users get them.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from llmtune.errors import UserError, closest_key, did_you_mean

PRECISIONS = ("no", "bf16", "fp16")
MAX_PREFLIGHT_COMBINATIONS = 64
_MISSING = object()
# Keys whose shipped default is null carry no type to compare with; these are their types
# (a sample value of the type), so `trainer.max_steps=abc` is still caught up front.
NULLABLE = {
    "trainer.max_steps": 0, "trainer.max_epochs": 0, "trainer.eval_every": 0, "trainer.save_every": 0,
    "trainer.early_stopping_patience": 0, "trainer.max_tokens": 0, "trainer.pad_to_multiple_of": 0, "trainer.max_grad_norm": 0.0, "trainer.resume": "",
    "trainer.load_best_margin": 0.0,
    "optimizer.lr": 0.0, "data.max_train_samples": 0, "data.max_eval_samples": 0, "data.num_proc": 0, "data.validation_split": 0.0,
    "data.name": "", "data.config_name": "", "data.train_file": "", "data.validation_file": "", "data.test_file": "",
    "data.columns": {}, "model.name_or_path": "", "model.tokenizer": "", "model.attn_implementation": "", "model.pad_vocab_to_multiple_of": 0, "scheduler.warmup_steps": 0,
    "distributed.wrap_classes": [], "distributed.nvme_path": "",
}
# Keys that take a string or a list, as the library behind them does (peft.target_modules: a
# regex over module names, or a list of module names).
STRING_OR_LIST = ("peft.target_modules", "peft.feedforward_modules")
_STAMP: str | None = None


# --------------------------------------------------------------------------- resolvers
def run_stamp() -> str:
    """A timestamp naming the default run directory, fixed for the life of the process.

    Under a multi-process launcher (torchrun, accelerate launch) every rank must pick the SAME
    directory, so the stamp is taken from the launcher's (parent's) start time, not from now.
    """
    global _STAMP
    if _STAMP is None:
        _STAMP = os.environ.get("LLMTUNE_RUN_STAMP") or _launcher_stamp() or _format(_dt.datetime.now())
    return _STAMP


def _format(moment: _dt.datetime) -> str:
    return moment.strftime("%Y%m%d-%H%M%S-%f")[:-3]


def _launcher_stamp() -> str | None:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    try:  # Linux: the parent's start time in clock ticks after boot, plus the boot time.
        fields = Path(f"/proc/{os.getppid()}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
        return _format(_dt.datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK")))
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("llmtune_stamp"):
        OmegaConf.register_new_resolver("llmtune_stamp", run_stamp)


# --------------------------------------------------------------------------- preflight
def preflight(config_dir: str, config_name: str, args: list[str], check_dir: bool = True) -> DictConfig | None:
    """Check the command line against the config tree; raise UserError with one clear line.
    Returns the composed config (a sweep's last combination checked; None for a user-supplied
    config tree). check_dir=False skips the run-directory checks (`llmtune inspect` writes none)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if any(a in ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn") for a in args):
        return None  # a user-supplied config tree: Hydra reports on it itself
    multirun = any(a in ("-m", "--multirun") for a in args)
    overrides = [a for a in args if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise UserError(f"cannot parse the overrides: {_first_line(exc)}. Overrides look like key=value, e.g. optimizer.lr=3e-4.") from None

    # A multirun sweep (a=1,2 b=x,y) is checked combination by combination.
    choices = []
    for ov in parsed:
        if ov.is_sweep_override() and not ov.key_or_group.startswith("hydra"):
            if ov.is_discrete_sweep():
                choices.append([_as_override(ov, v) for v in ov.sweep_string_iterator()])
            else:  # interval/range sweeps are sampled by the sweeper; check the key only
                choices.append([None])
                _check_key_exists(config_dir, config_name, ov, parsed)
        elif ov.is_sweep_override():
            continue  # hydra.sweeper.params.* and friends belong to the sweeper
        else:
            choices.append([ov.input_line])
    cfg = None
    for combo in itertools.islice(itertools.product(*choices), MAX_PREFLIGHT_COMBINATIONS):
        cfg = _check_combination(config_dir, config_name, [c for c in combo if c is not None])
        if check_dir and int(os.environ.get("RANK", "0")) == 0:
            from llmtune.rundir import check_output_dir, check_run_dir

            # Before Hydra creates the directory (a sweep's: output_dir; each job checks its own).
            output_dir = Path(str(cfg.output_dir)).expanduser().resolve()
            if multirun:
                check_output_dir(output_dir)
            else:
                check_run_dir(output_dir, cfg.trainer)
    return cfg


def _as_override(ov, value: str) -> str:
    prefix = {"ADD": "+", "FORCE_ADD": "++"}.get(ov.type.name, "")
    return f"{prefix}{ov.key_or_group}={value}"


def _first_line(exc: BaseException) -> str:
    while not str(exc).strip() and exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else type(exc).__name__


def _is_group(key: str) -> bool:
    from llmtune.paths import config_groups

    return key.split("@", 1)[0] in config_groups() or key.startswith("hydra/")


def _compose(config_dir: str, config_name: str, overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=config_dir, version_base=None):
            return compose(config_name=config_name, overrides=overrides)
    except MissingConfigException as exc:
        if "hydra/" in str(exc):
            raise UserError(f"{_first_line(exc)}; is the Hydra plugin installed (e.g. pip install 'llmtune[optuna]')?") from None
        raise UserError(_first_line(exc)) from None
    except (HydraException, OmegaConfBaseException) as exc:
        raise UserError(f"invalid configuration: {_first_line(exc)}") from None


def _group_choices(parsed_lines: list[str]) -> list[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(parsed_lines)
    return [ov.input_line for ov in parsed if _is_group(ov.key_or_group) or ov.key_or_group.startswith("hydra.searchpath")]


def _check_group_option(ov) -> None:
    from llmtune.paths import group_options

    group = ov.key_or_group.split("@", 1)[0]
    if group.startswith("hydra/") or ov.type.name == "DEL":
        return
    options = group_options(group)
    # A list selects several options of one group (tracker=[tensorboard,mlflow]).
    values = ov.value() if isinstance(ov.value(), list) else [ov.value()]
    for value in values:
        if not isinstance(value, str) or value not in options:
            raise UserError(
                f"{ov.input_line}: '{value}' is not an option of config group '{group}'.{did_you_mean(str(value), options)} "
                f"Options: {', '.join(options)}."
            )


def _check_key_exists(config_dir: str, config_name: str, ov, parsed) -> None:
    base = _compose(config_dir, config_name, _group_choices([p.input_line for p in parsed if not p.is_sweep_override()]))
    _check_key(base, ov)


def _all_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in cfg.keys():
        full = f"{prefix}{key}"
        keys.append(full)
        node = cfg._get_node(key)
        if isinstance(node, DictConfig) and not node._is_none() and not node._is_missing():
            keys.extend(_all_keys(node, f"{full}."))
    return keys


def _check_key(base: DictConfig, ov) -> Any:
    """Raise on an unknown key; return its default value (or _MISSING for + additions)."""
    key = ov.key_or_group
    if ov.type.name in ("ADD", "FORCE_ADD") or key.startswith("hydra"):
        return _MISSING
    value = OmegaConf.select(base, key, default=_MISSING, throw_on_resolution_failure=False)
    if value is _MISSING:
        keys = [k for k in _all_keys(base) if not k.startswith("hydra")]
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        siblings = [k for k in keys if parent and k.startswith(parent + ".") and k.count(".") == key.count(".")]
        where = f" Keys under '{parent}': {', '.join(s.rsplit('.', 1)[1] for s in siblings)}." if siblings else ""
        guess = closest_key(key, keys)
        hint = f" Did you mean '{guess}'?" if guess else ""
        raise UserError(
            f"{ov.input_line}: unknown config key '{key}'.{hint}{where} "
            f"To add a new key on purpose, write +{ov.input_line}."
        )
    return value


def _check_type(key: str, default: Any, value: Any) -> None:
    if default is None:
        default = NULLABLE.get(key)
    if default is None or default is _MISSING or value is None or (key in STRING_OR_LIST and isinstance(value, (str, list))):
        return
    if isinstance(default, str) and "${" in default:
        return  # an interpolation; its target is checked on its own
    expected: tuple[type, ...]
    if isinstance(default, bool):
        expected, name = (bool,), "true or false"
    elif isinstance(default, int):
        expected, name = (int,), "an integer"
    elif isinstance(default, float):
        expected, name = (int, float), "a number"
    elif isinstance(default, str):
        expected, name = (str, int, float), "a string"
    elif isinstance(default, (list, ListConfig)):
        expected, name = (list,), "a list like [a,b]"
    elif isinstance(default, (dict, DictConfig)):
        expected, name = (dict,), "a mapping like {k: v}"
    else:
        return
    if isinstance(value, bool) and bool not in expected:
        ok = False
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise UserError(f"{key}={value!r}: expected {name}. Fix the value on the command line.")


def pretraining_tasks(config_dir: str | None = None) -> list[str]:
    """The task options that run under `llmtune pretrain` (`is_pretraining: true` in conf/task/)."""
    from llmtune.paths import conf_dir

    folder = Path(config_dir or conf_dir()) / "task"
    if not folder.is_dir():  # a recipe directory: the task group lives in conf/
        folder = conf_dir() / "task"
    return sorted(p.stem for p in folder.glob("*.yaml") if OmegaConf.load(p).get("is_pretraining", False))


def _check_pretraining_task(config_dir: str, option: str) -> None:
    allowed = pretraining_tasks(config_dir)
    if option not in allowed:
        raise UserError(
            f"task={option}: `llmtune pretrain` runs {' or '.join(f'task={t}' for t in allowed)}; for task={option} use `llmtune finetune task={option}`."
        )


def _check_combination(config_dir: str, config_name: str, overrides: list[str]) -> DictConfig:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    for ov in parsed:
        if _is_group(ov.key_or_group):
            _check_group_option(ov)
        if config_name == "pretrain" and ov.key_or_group == "task":
            _check_pretraining_task(config_dir, str(ov.value()))
    base = _compose(config_dir, config_name, _group_choices(overrides))
    for ov in parsed:
        if _is_group(ov.key_or_group) or ov.key_or_group.startswith("hydra"):
            continue
        default = _check_key(base, ov)
        if ov.type.name != "DEL":
            _check_type(ov.key_or_group, default, ov.value())
    cfg = _compose(config_dir, config_name, overrides)
    validate(cfg)
    return cfg


# --------------------------------------------------------------------------- semantic rules
def validate(cfg: DictConfig) -> None:
    """Cross-field rules and file checks on a composed config; raise UserError on the first."""
    try:
        _validate(cfg)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 -- any failure here (an interpolation that does not resolve, a wrong node type) is the user's config: one line
        raise UserError(f"invalid configuration: {_first_line(exc)}") from None


def _validate(cfg: DictConfig) -> None:
    from llmtune.builders import build_peft, require_tracker_packages
    from llmtune.engine import distributed

    _validate_trainer(cfg.trainer)
    _validate_optimizer(cfg.optimizer)
    _validate_model(cfg.model)
    _validate_data(cfg.data)
    _validate_validation_split(cfg.data.get("validation_split"))
    _validate_max_length(cfg.task.get("max_length"))
    build_peft(cfg).preflight(cfg)  # the PEFT method's own refusals (hardware, task), before anything is written
    distributed.check(cfg)
    require_tracker_packages(cfg)


def _validate_trainer(t: DictConfig) -> None:
    if t.precision not in PRECISIONS:
        raise UserError(f"trainer.precision={t.precision!r}: expected one of {', '.join(PRECISIONS)}.{did_you_mean(str(t.precision), PRECISIONS)}")
    if t.precision == "fp16" and not _cuda_available():
        raise UserError("trainer.precision=fp16 needs a CUDA GPU (none found); use trainer.precision=bf16 or no on CPU.")
    for key in ("max_steps", "max_epochs", "eval_every", "log_every", "save_every", "early_stopping_patience", "max_tokens", "pad_to_multiple_of"):
        value = t.get(key)
        if value is not None and value < 1:
            raise UserError(f"trainer.{key}={value}: must be at least 1 (or null to turn it off).")
    if not t.max_steps and not t.max_epochs:
        raise UserError("neither trainer.max_steps nor trainer.max_epochs is set; set one, e.g. trainer.max_steps=500.")
    for key in ("batch_size", "grad_accum", "eval_batch_size"):
        if t[key] < 1:
            raise UserError(f"trainer.{key}={t[key]}: must be a positive integer.")
    margin = t.get("load_best_margin")
    if margin is not None and margin < 0:
        raise UserError(f"trainer.load_best_margin={margin}: must be at least 0 (or null for one standard error of the validation metric).")
    if t.resume not in (None, "auto") and not Path(str(t.resume)).exists():
        raise UserError(f"trainer.resume={t.resume}: no such checkpoint or run directory; use trainer.resume=auto or a path to a run or checkpoints/step-N.")


def _validate_optimizer(o: DictConfig) -> None:
    lr = o.lr
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0):
        raise UserError(f"optimizer.lr={lr}: must be positive, e.g. optimizer.lr=3e-4.")


def _validate_model(m: DictConfig) -> None:
    if not m.name_or_path and not m.config:
        raise UserError("model.name_or_path is empty and model.config is not set; name a model (e.g. model=minilm or model.name_or_path=./my_model).")
    multiple = m.get("pad_vocab_to_multiple_of")
    if multiple is not None and multiple < 1:
        raise UserError(f"model.pad_vocab_to_multiple_of={multiple}: must be a positive integer (64 suits GPUs) or null.")
    name = m.name_or_path
    # A local path (not a hub id such as org/model) must exist.
    if name and str(name).startswith((".", "/", "~")) and not Path(str(name)).expanduser().exists():
        raise UserError(f"model.name_or_path={name}: no such directory; point it at a folder with config.json (e.g. a run's final/).")
    from llmtune.models import check_source
    from llmtune.tokenization import check_tokenizer_folder

    check_source(m)  # a package: folder or GGUF file that is missing, in one line
    # Here, before the run directory is made; load_tokenizer checks again for direct callers.
    tokenizer = m.get("tokenizer")
    check_tokenizer_folder("model.tokenizer" if tokenizer else "model.name_or_path", tokenizer or name)


def _validate_data(d: DictConfig) -> None:
    from llmtune.data.readers import detect_format

    for key in ("train_file", "validation_file", "test_file"):
        value = d.get(key)
        if value:
            path = Path(str(value)).expanduser()
            if not path.is_file():
                if path.is_dir():
                    raise UserError(f"data.{key}: {path.resolve()} is a directory; name a file in it.")
                raise UserError(f"data.{key}: no such file {path.resolve()}; check the path (relative paths are resolved from the directory you ran llmtune in).")
            detect_format(path)  # raises on an unknown extension
    cap = d.get("validation_split_max")
    if cap is not None and cap < 1:
        raise UserError(f"data.validation_split_max={cap}: must be at least 1 (or null for no cap on the split data.validation_split holds out).")
    if (d.validation_file or d.test_file) and not d.train_file and not d.name:
        raise UserError("data.validation_file/test_file is set but data.train_file is not; give data.train_file too.")


def _validate_validation_split(fraction) -> None:
    # A fraction of the training rows; null turns the held-out split off (0 would be an empty split).
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1):
        raise UserError(f"data.validation_split={fraction}: must be a fraction strictly between 0 and 1 (e.g. 0.1), or null for no held-out split.")


def _validate_max_length(length) -> None:
    # Every task cuts its examples (or packs its blocks) to task.max_length tokens; the model's
    # position limit is checked once the model's config is known (models.check_model).
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
        raise UserError(f"task.max_length={length}: must be a positive number of tokens, e.g. task.max_length=128.")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


