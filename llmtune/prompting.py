"""Prompting baselines: `llmtune evaluate prompting=zero_shot|few_shot|cloze ...`.

A model that was not trained on the task is prompted (the task's `prompt_predict`), and its
predictions are scored with the task's own metric (`prompt_metrics`, the metric of fine-tuned
runs), so a baseline and a fine-tuned run can be compared number for number:

    llmtune evaluate prompting=zero_shot task=classification data.validation_file=dev.jsonl
    llmtune evaluate prompting=few_shot prompting.k=4 prompting.seeds=[0,1,2] task=ner
    llmtune evaluate prompting=cloze model=tiny_bert prompting.verbalizer={pos: great, neg: bad}

- The model: a `model` group option or `model.*` keys (default model=smollm2; minilm for
  cloze), or a trained run's final/ given as PATH. zero_shot and few_shot prompt a causal LM,
  cloze a masked LM (AutoModelForMaskedLM).
- The data: data.validation_file / data.test_file (scored) and data.train_file (the pool of
  demonstrations), or the data group's hub dataset or built-in data (its test split when it has
  one, else validation). Labels come from the training split, else from the scored split.
- Demonstrations: prompting.k rows drawn from the training split with each seed
  (random.Random(seed), so the same seed draws the same rows); several seeds give mean ± std.
- Nothing is written but the output= file; no run directory is made.
"""

from __future__ import annotations

import logging
import random
import statistics
from pathlib import Path

from llmtune.errors import UserError, did_you_mean

log = logging.getLogger("llmtune")
MODES = ("zero_shot", "few_shot", "cloze")
KEYS = {
    "prompting": (MODES, None, "zero_shot | few_shot (a causal LM) | cloze (a masked LM, PET-style)"),
    "prompting.k": (int, None, "demonstrations drawn from the training split (few_shot: shown; cloze: fine-tuned on) (default: 4)"),
    "prompting.seed": (int, None, "the seed demonstrations are drawn with (default: the config's seed)"),
    "prompting.seeds": (str, None, "several seeds, e.g. [0,1,2]: one run each, mean and std reported"),
    "prompting.template": (str, None, "the task's prompt, with its fields (classification: {text} {text_pair} {labels}; cloze: {text} {mask}; ner: {text} {types}; qa: {context} {question}; summarization, translation: {source})"),
    "prompting.verbalizer": (str, None, "label (ner: entity type) -> word, e.g. {positive: great, negative: terrible} (default: the names)"),
    "prompting.chat": (bool, True, "use the tokenizer's chat template when it has one"),
    "prompting.finetune_steps": (int, 0, "cloze: AdamW steps on the k demonstrations before scoring (0: zero-shot cloze)"),
    "prompting.lr": (float, 1e-5, "cloze fine-tuning's learning rate"),
    "prompting.max_length": (int, 1024, "prompt tokens kept (longer prompts lose their start)"),
    "max_new_tokens": (int, 128, "tokens generated per answer (tasks that generate, e.g. ner)"),
    "batch_size": (int, 8, "prompts per forward pass"),
    "split": (("test", "validation"), None, "the data's split to score (default: test when it has one, else validation)"),
    "data.train_file": (Path, None, "the demonstrations' pool (and the labels)"),
    "data.validation_file": (Path, None, "score this file"),
    "data.test_file": (Path, None, "score this file"),
    "output": (Path, None, "also write the metrics to this JSON file"),
    "device": (("auto", "cpu", "cuda"), "auto", "auto: cuda when a GPU is visible, else cpu"),
}
# Other key=value arguments are overrides of the finetune config's groups (composed and checked
# as `llmtune finetune` does): model=..., model.*, task=..., task.*, data.*, seed.
HYDRA_KEYS = ("model", "task", "data", "seed")
AUTO_CLASS = {"zero_shot": "AutoModelForCausalLM", "few_shot": "AutoModelForCausalLM", "cloze": "AutoModelForMaskedLM"}
DEFAULT_MODEL = {"zero_shot": "smollm2", "few_shot": "smollm2", "cloze": "minilm"}
DEFAULT_K = 4


def is_prompting(argv: list[str]) -> bool:
    """Whether an `llmtune evaluate` command line asks for a prompting baseline."""
    return any(_key(arg) == "prompting" or _key(arg).startswith("prompting.") for arg in argv)


def _key(arg: str) -> str:
    return arg.partition("=")[0].lstrip("+")


def split_argv(argv: list[str]):
    """(our arguments parsed, Hydra overrides, PATH or None)."""
    from llmtune.commands._args import parse

    ours, overrides, path = [], [], None
    for arg in argv:
        key = _key(arg)
        if "=" not in arg and path is None and not arg.startswith("-"):
            path = arg
        elif key in KEYS:
            ours.append(arg)
        elif "=" in arg and key.split(".")[0] in HYDRA_KEYS:
            overrides.append(arg)
        else:
            known = [*KEYS, "model", "task", "data.*", "seed"]
            raise UserError(f"evaluate: unknown argument '{key}' with prompting=.{did_you_mean(key, known)} Arguments: {', '.join(known)}; see `llmtune evaluate --help`.")
    return parse(ours, KEYS, verb="evaluate"), overrides, path


def settings_from(args, cfg, demos_wanted: int):
    """(PromptSettings, seeds) from the command line, checked."""
    from llmtune.tasks.base import PromptSettings

    for key in ("prompting.k", "prompting.finetune_steps", "prompting.max_length", "batch_size", "max_new_tokens"):
        if args[key] is not None and args[key] < (0 if key in ("prompting.k", "prompting.finetune_steps") else 1):
            raise UserError(f"evaluate: {key}={args[key]}: must be {'0' if key.endswith(('k', 'steps')) else '1'} or more.")
    if args["prompting.lr"] <= 0:
        raise UserError(f"evaluate: prompting.lr={args['prompting.lr']}: must be positive, e.g. prompting.lr=1e-5.")
    settings = PromptSettings(
        mode=args.prompting, template=args["prompting.template"], verbalizer=parse_mapping(args["prompting.verbalizer"]),
        chat=args["prompting.chat"], batch_size=args.batch_size, max_length=args["prompting.max_length"],
        generation={"max_new_tokens": args.max_new_tokens}, finetune_steps=args["prompting.finetune_steps"], lr=args["prompting.lr"],
    )
    seeds = parse_seeds(args["prompting.seeds"]) if args["prompting.seeds"] else [args["prompting.seed"] if args["prompting.seed"] is not None else int(cfg.seed)]
    if args["prompting.seeds"] and args["prompting.seed"] is not None:
        raise UserError("evaluate: give prompting.seed or prompting.seeds, not both.")
    return settings, (seeds if demos_wanted else seeds[:1])  # no demonstrations: nothing random to repeat


def parse_mapping(text: str | None) -> dict[str, str]:
    """`{a: x, b: y}` (YAML flow mapping) -> {"a": "x", "b": "y"}."""
    import yaml

    if not text:
        return {}
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict) or not value or any(v is None or isinstance(v, (dict, list)) for v in value.values()):
        raise UserError(f"evaluate: prompting.verbalizer={text!r}: expected a mapping of labels to words, e.g. prompting.verbalizer='{{positive: great, negative: terrible}}'.")
    return {str(k): str(v) for k, v in value.items()}


def parse_seeds(text: str) -> list[int]:
    """`[0,1,2]` or `0,1,2` -> [0, 1, 2]."""
    parts = [p.strip() for p in text.strip().strip("[]").split(",") if p.strip()]
    if not parts or not all(p.lstrip("-").isdigit() for p in parts) or len(set(parts)) < len(parts):
        raise UserError(f"evaluate: prompting.seeds={text!r}: expected distinct integers, e.g. prompting.seeds=[0,1,2].")
    return [int(p) for p in parts]


def draw_demos(pool, k: int, seed: int) -> list[dict]:
    """k rows of `pool` (a training split), the same rows for the same seed."""
    if k > len(pool):
        raise UserError(f"evaluate: prompting.k={k}: the training split has only {len(pool)} rows; lower prompting.k.")
    return [pool[i] for i in sorted(random.Random(seed).sample(range(len(pool)), k))]


# ------------------------------------------------------------------ configuration and data
def compose(overrides: list[str], mode: str, path: str | None):
    """The finetune config with the overrides, checked as `llmtune finetune` checks it."""
    from llmtune import config
    from llmtune.paths import conf_dir

    if path is None and not any(_key(o).split(".")[0] == "model" for o in overrides):
        overrides = [f"model={DEFAULT_MODEL[mode]}", *overrides]
    config.register_resolvers()
    return config.preflight(str(conf_dir()), "finetune", overrides, check_dir=False)


def load_data(args, cfg, task):
    """(scored split name, its rows, the training rows or None) as a DatasetDict's splits."""
    from datasets import DatasetDict

    from llmtune.data.load import load_raw, read_split

    files = {s: args[f"data.{s}_file"] for s in ("train", "validation", "test") if args[f"data.{s}_file"] is not None}
    for key, file in files.items():
        if not file.is_file():
            raise UserError(f"evaluate: data.{key}_file={file}: no such file.")
    if files:
        renames = dict(cfg.data.columns or {})
        raw = DatasetDict({s: read_split(f, f"{s}_file", task, renames) for s, f in files.items()})
    else:
        raw, _ = load_raw(cfg.data, task, cfg.seed)
    scored = [s for s in ("test", "validation") if s in raw]
    split = args.split or (scored[0] if scored else None)
    if split is None or split not in raw:
        raise UserError(f"evaluate: no {split or 'validation or test'} split to score (the data has: {', '.join(raw)}); give data.validation_file=FILE or data.test_file=FILE.")
    train = raw["train"] if "train" in raw else None
    # Labels come from the training split as in training, else from the scored data itself.
    task.setup(DatasetDict({"train": train if train is not None else raw[split], split: raw[split]}))
    return split, raw[split], train


# ------------------------------------------------------------------ the model
def _model_kind(auto_class: str):
    """A plain Task (every member at its default) loading `auto_class`: what tokenization.load_tokenizer
    and models.load_model read of a task. The scored task's own Auto class is its fine-tuning head."""
    from llmtune.tasks.base import Task

    kind = Task()
    kind.auto_class = auto_class
    return kind


def load_model(cfg, mode: str, path: str | None, texts: list[str], device: str):
    """(model, tokenizer, description) for the mode's kind of model (causal or masked LM)."""
    from accelerate.utils import set_seed

    from llmtune import models, tokenization

    wanted = AUTO_CLASS[mode]
    if path is not None:
        return _trained(path, wanted, device)
    kind = _model_kind(wanted)
    tokenizer = tokenization.load_tokenizer(cfg.model, kind, iter(texts))
    set_seed(int(cfg.seed))  # a model built from scratch gets the same weights each time
    model = models.load_model(cfg.model, kind, tokenizer, {})
    if mode == "cloze" and cfg.model.name_or_path:
        _warn_on_fresh_head(model, models.model_source(cfg.model))
    return model.to(device).eval(), tokenizer, str(cfg.model.name_or_path or f"{cfg.model.config.model_type} from model.config")


def _trained(path: str, wanted: str, device: str):
    from llmtune.trained import load_trained

    trained = load_trained(path, device)
    if trained.task.auto_class != wanted:
        raise UserError(f"{path}: a task={trained.task.name} model ({trained.task.auto_class}); this prompting mode needs a {wanted.removeprefix('AutoModelFor')} model (e.g. a final/ of task=sft or clm; of mlm for cloze).")
    return trained.model, trained.tokenizer, str(trained.path)


def _warn_on_fresh_head(model, source: str) -> None:
    """A checkpoint saved without its masked-LM head (sentence encoders such as MiniLM) gets a
    random one: zero-shot cloze is then at chance. Say so."""
    from safetensors import safe_open

    weights = Path(source) / "model.safetensors"
    if not weights.is_file():
        return
    with safe_open(str(weights), "pt") as f:
        saved = set(f.keys())
    head = [name for name, _ in model.named_parameters() if name.startswith("cls.")]
    if head and not any(name in saved for name in head):
        log.warning("%s has no masked-LM head (its %s weights start random): zero-shot cloze scores are at chance; "
                    "fine-tune on demonstrations with prompting.finetune_steps=N, or use a model trained with task=mlm", source, head[0])


# ------------------------------------------------------------------ running
def run_seeds(task, model, tokenizer, rows: list[dict], train, settings, seeds: list[int], k: int) -> list[dict]:
    """The metrics of one prompting run per seed; a fine-tuning mode starts each from the same weights."""
    import dataclasses

    import torch

    original = {n: t.detach().clone() for n, t in model.state_dict().items()} if settings.finetune_steps and k else None
    results = []
    for seed in seeds:
        torch.manual_seed(seed)
        demos = draw_demos(train, k, seed) if k else []
        run = dataclasses.replace(settings, seed=seed)
        predictions = task.prompt_predict(model, tokenizer, rows, demos, run)
        results.append(task.prompt_metrics(rows, predictions))
        if original is not None:
            model.load_state_dict(original)
        log.info("seed %d: %s", seed, ", ".join(f"{m} {v:.4f}" for m, v in results[-1].items()))
    return results


def aggregate(results: list[dict]) -> dict[str, float]:
    """The mean of each metric over the seeds, and its standard deviation (`<metric>_std`) for several."""
    out = {}
    for name in results[0]:
        values = [r[name] for r in results]
        out[name] = statistics.fmean(values)
        if len(values) > 1 and not name.endswith("_stderr"):
            out[f"{name}_std"] = statistics.stdev(values)
    return out


def main(argv: list[str]) -> None:
    from llmtune.builders import build_task
    from llmtune.trained import resolve_device
    from llmtune.ui.console import metrics_table, print_table, setup_logging

    args, overrides, path = split_argv(argv)
    if args.output is not None and args.output.is_dir():
        raise UserError(f"evaluate: output={args.output} is a directory; name a file, e.g. output={args.output / 'metrics.json'}.")
    mode = args.prompting or "zero_shot"
    setup_logging(True)
    cfg = compose(overrides, mode, path)
    task = build_task(cfg)
    if mode not in task.prompt_modes:
        offered = f"it offers prompting={'|'.join(task.prompt_modes)}" if task.prompt_modes else "it has no prompting baseline; fine-tune it instead"
        raise UserError(f"evaluate: prompting={mode} is not available for task={task.name}; {offered}.")
    k = _demos_wanted(args, mode)
    settings, seeds = settings_from(args, cfg, k)
    split, scored, train = load_data(args, cfg, task)
    if k and train is None:
        raise UserError(f"evaluate: prompting={mode} with prompting.k={k} draws its demonstrations from a training split; give data.train_file=FILE.")
    settings.device = resolve_device(args.device, "evaluate")
    texts = [t for rows in (train, scored) if rows is not None for t in task.texts(rows)]
    model, tokenizer, model_name = load_model(cfg, mode, path, texts, settings.device)
    rows = list(scored)
    results = run_seeds(task, model, tokenizer, rows, train, settings, seeds, k)
    metrics = aggregate(results)
    source = scored.info.description or f"the {split} split"
    print_table(metrics_table(f"prompting={mode} {task.name}", {split: metrics}, task.main_metric))
    demos = f"{k} demonstrations per prompt, seeds {', '.join(map(str, seeds))}" if k else "no demonstrations"
    print(f"model: {model_name}\ndata: {source} ({len(rows)} examples); {demos}")
    if args.output is not None:
        from llmtune.commands.evaluate import _write_json

        prompting = {"mode": mode, "k": k, "seeds": seeds, "template": settings.template, "verbalizer": settings.verbalizer,
                     "chat": settings.chat, "finetune_steps": settings.finetune_steps}
        _write_json(args.output, {"task": task.name, "main_metric": task.main_metric, "greater_is_better": task.greater_is_better,
                                  "model": model_name, "kind": "prompting", "prompting": prompting, "data": source,
                                  "examples": len(rows), split: metrics, "per_seed": results})
        print(f"metrics: {args.output}")


def _demos_wanted(args, mode: str) -> int:
    """Demonstrations per run: prompting.k for few_shot and cloze fine-tuning, none otherwise."""
    k = args["prompting.k"]
    uses_demos = mode == "few_shot" or (mode == "cloze" and args["prompting.finetune_steps"])
    if k and not uses_demos:
        raise UserError(f"evaluate: prompting.k={k} needs prompting=few_shot (or cloze with prompting.finetune_steps=N); prompting={mode} uses no demonstrations.")
    if uses_demos and k == 0:
        raise UserError(f"evaluate: prompting={mode} with prompting.k=0 shows no demonstrations; use prompting=zero_shot, or k of 1 or more.")
    return (DEFAULT_K if k is None else k) if uses_demos else 0
