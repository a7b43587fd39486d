"""`llmtune compare`: every PEFT method (and the prompting baselines) on the same task, model,
data and step budget, several seeds each; one row per method.

A compare directory (output_dir; default runs/compare/<task>/<stamp>/) holds:

    <method>/seed-<s>/   one ordinary finetune run each (config.yaml, metrics.json, final/, ...)
    compare.csv          one row per method, full precision
    compare.md           the same as a Markdown table, under a line saying what was measured
    compare.png          the main metric against the share of trainable parameters (log x), ± std

Each run is `llmtune finetune` with the compare's overrides plus peft=<method> seed=<s>
output_dir=<its dir>. By default each runs in a process of its own (isolate=true): its peak
memory is then its own (in one process, a later run reuses the heap an earlier one freed, and
the first pays for every lazy import), and a run that crashes hard takes only itself down.
isolate=false runs them in this process, which saves the imports (a few seconds per run).

Re-running the same command with output_dir= of an earlier compare keeps the runs that finished
(metrics.json, and a config.yaml with the same settings) and runs the others again from the
start: a resumed run's time and memory would cover only part of it.

The table reads everything from the runs' metrics.json (the job writes trainable parameters,
peak memory, training time and tokens/s there), so `runs=[dir,...]` builds one from runs that
exist, trained by compare or not. Reading and rendering the table is llmtune.compare_table.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llmtune.compare_table import (
    RunResult,
    Table,
    build_table,
    differing_settings,
    flat_settings,
    show,
    varying_settings,
    write,
)
from llmtune.errors import Interrupted, UserError, closest, did_you_mean

PROMPTING = ("zero_shot", "few_shot")
# zero_shot shows no demonstrations and decodes greedily: every seed would give the same row, so
# it runs once (with the first seed).
SEEDLESS = ("zero_shot",)
UNPREFIXED = ("max_new_tokens", "batch_size")  # prompting.<key> on compare's line -> <key>
DEFAULT_SEEDS = (1, 2, 3)
# Full fine-tuning and the two cheapest kinds of PEFT (adapters, biases): conf/peft has many
# more, each named in methods= when wanted.
DEFAULT_METHODS = ("none", "lora", "bitfit")
OWN_KEYS = ("methods", "seeds", "runs", "output_dir", "isolate")
# Keys compare sets for each run itself: on the command line they would fight it.
SET_PER_RUN = {
    "peft": "list the methods in methods=[...]",
    "seed": "list the seeds in seeds=[...]",
    "trainer.resume": "compare runs an unfinished run again from the start",
    "trainer.overwrite_output_dir": "compare keeps finished runs and replaces unfinished ones itself",
}
# Settings a finished run may differ in and still be the run the compare asks for: where it
# lives and how it is watched, not what it trains.
SHARED_PROCESS_NOTE = ("The runs shared one process (isolate=false): a later run reuses heap an earlier one freed, "
                       "so peak RSS growth does not compare between rows.")


# --------------------------------------------------------------------------- what to run
@dataclass
class Spec:
    """A compare command: methods × seeds, the finetune overrides every run gets, where."""

    methods: list[str]
    seeds: list[int]
    overrides: list[str] = field(default_factory=list)
    prompting: list[str] = field(default_factory=list)  # prompting.* keys: for the prompting baselines only
    output_dir: Path | None = None
    isolate: bool = True


@dataclass
class Planned:
    """One (method, seed) run: its directory and the overrides that make it."""

    method: str
    seed: int
    path: Path
    overrides: list[str]
    done: bool = False  # finished already with the same settings: kept, not run again


def parse_list(key: str, raw: str) -> list[str]:
    """`[a,b]` or `a,b` (Hydra's list syntax, brackets optional) -> ["a", "b"]."""
    text = raw.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    items = [item.strip().strip("'\"") for item in text.split(",")]
    if "" in items[:-1] or (len(items) > 1 and items[-1] == ""):
        raise UserError(f"compare: {key}={raw}: an empty item; write {key}=[a,b,c].")
    return [item for item in items if item]


def parse_command(argv: list[str]) -> tuple[Spec, list[Path] | None]:
    """The command line -> (spec, runs): runs is the list of run directories of `runs=[...]`
    (a table from runs that exist), None when the compare trains."""
    from llmtune.commands._args import convert

    own: dict[str, str] = {}
    overrides: list[str] = []
    prompting: list[str] = []
    for arg in argv:
        key, eq, raw = arg.partition("=")
        if not eq or arg.startswith("-"):
            raise UserError(f"compare: unexpected argument '{arg}'; `llmtune compare` takes key=value arguments only (see `llmtune compare --help`).")
        bare = key.lstrip("+~")
        if bare in own:
            raise UserError(f"compare: {bare} is given twice; give it once.")
        if bare in OWN_KEYS:
            own[bare] = raw
        elif bare == "prompting" or bare.startswith("prompting."):
            prompting.append(_prompting_arg(arg, bare))
        elif bare in SET_PER_RUN:
            raise UserError(f"compare sets {bare} for each run: {SET_PER_RUN[bare]}; drop {arg}.")
        else:
            _check_not_misspelt(bare)
            overrides.append(arg)
    runs = [Path(p).expanduser() for p in parse_list("runs", own["runs"])] if "runs" in own else None
    if runs is not None:
        extra = [k for k in ("methods", "seeds", "isolate") if k in own] + overrides + prompting
        if extra:
            raise UserError(f"compare: runs=[...] builds the table from runs that exist; drop {extra[0]} (or drop runs= to train).")
        if not runs:
            raise UserError("compare: runs=[] is empty; list run directories, e.g. runs=[runs/a,runs/b].")
    spec = Spec(
        methods=_methods(own.get("methods")),
        seeds=_seeds(own.get("seeds")),
        overrides=overrides,
        prompting=prompting,
        output_dir=Path(own["output_dir"]).expanduser() if own.get("output_dir") else None,
        isolate=convert("isolate", own["isolate"], bool, "compare") if "isolate" in own else True,
    )
    if prompting and not set(spec.methods) & set(PROMPTING):
        raise UserError(f"compare: {prompting[0]} is for the prompting baselines; add zero_shot or few_shot to methods=, or drop it.")
    return spec, runs


def _prompting_arg(arg: str, key: str) -> str:
    if key == "prompting":
        raise UserError(f"compare: {arg}: name the prompting baselines in methods=, e.g. methods=[none,lora,{arg.partition('=')[2] or 'zero_shot'}].")
    if key == "prompting.model":
        from llmtune.paths import group_options

        name, known = arg.partition("=")[2], group_options("model")
        if name not in known:
            raise UserError(f"compare: {arg}: no such model option.{did_you_mean(name, known)} Options: {', '.join(known)} (conf/model/).")
    return arg


def _check_not_misspelt(key: str) -> None:
    """A key that is no config key and close to one of compare's own is a typo of it (method=
    for methods=); anything else is left to the finetune checks, which know the config."""
    from llmtune.paths import config_groups

    if "." in key or key in (*config_groups(), "command", "seed", "output_dir"):
        return
    mine = closest(key, OWN_KEYS)
    if mine:
        raise UserError(f"compare: unknown argument '{key}'. Did you mean '{mine}'? See `llmtune compare --help`.")


def _methods(raw: str | None) -> list[str]:
    from llmtune.paths import group_options

    known = [*group_options("peft"), *PROMPTING]
    if raw is None:
        return [m for m in DEFAULT_METHODS if m in known]
    methods = parse_list("methods", raw)
    if not methods:
        raise UserError(f"compare: methods=[] is empty; name at least one of {', '.join(known)}.")
    for method in methods:
        if method not in known:
            raise UserError(f"compare: unknown method '{method}' in methods=.{did_you_mean(method, known)} Methods: {', '.join(known)} (conf/peft/*.yaml and the prompting baselines).")
        if methods.count(method) > 1:
            raise UserError(f"compare: methods lists '{method}' twice; list each method once.")
    return methods


def _seeds(raw: str | None) -> list[int]:
    if raw is None:
        return list(DEFAULT_SEEDS)
    seeds = []
    for item in parse_list("seeds", raw):
        try:
            seeds.append(int(item))
        except ValueError:
            raise UserError(f"compare: seeds={raw}: '{item}' is not an integer; write seeds=[1,2,3].") from None
    if not seeds:
        raise UserError("compare: seeds=[] is empty; give at least one seed, e.g. seeds=[1,2,3].")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"compare: seeds={raw} repeats a seed; list each seed once.")
    return seeds


# --------------------------------------------------------------------------- planning
def plan(spec: Spec) -> tuple[Path, list[Planned]]:
    """(compare directory, the runs): every method's config checked, and every finished run
    checked against the settings asked for, before anything trains. One line on a problem."""
    from llmtune.rundir import check_output_dir

    for method in spec.methods:
        if method in PROMPTING:
            _prompting_module(method)  # refused first: nothing else is worth checking then
    first = next((m for m in spec.methods if m not in PROMPTING), None)
    if first is None:
        raise UserError("compare: methods lists only prompting baselines; add a training method (e.g. none or lora) or use `llmtune evaluate ... prompting=...`.")
    cfg = _preflight(first, spec.seeds[0], spec.overrides)
    out = spec.output_dir or Path("runs") / "compare" / str(cfg.task.name) / _stamp()
    out = out.expanduser().resolve()
    check_output_dir(out)
    planned = []
    for method in spec.methods:
        if method in PROMPTING:
            seeds = spec.seeds[:1] if method in SEEDLESS else spec.seeds
            planned += [_plan_prompting(method, seed, spec, out) for seed in seeds]
        else:
            method_cfg = cfg if method == first else _preflight(method, spec.seeds[0], spec.overrides)
            planned += [_plan_training(method, seed, spec, out, method_cfg) for seed in spec.seeds]
    return out, planned


def _stamp() -> str:
    from llmtune import config

    return config.run_stamp()


def _preflight(method: str, seed: int, overrides: list[str]):
    """The composed config of one method (every check of `llmtune finetune`, bar the run
    directory: each seed's is checked on its own)."""
    from llmtune import config
    from llmtune.paths import conf_dir

    config.register_resolvers()
    try:
        return config.preflight(str(conf_dir()), "finetune", [*overrides, f"peft={method}", f"seed={seed}"], check_dir=False)
    except UserError as exc:
        raise UserError(f"compare (method {method}): {exc}") from None


def _plan_training(method: str, seed: int, spec: Spec, out: Path, cfg) -> Planned:
    import yaml
    from omegaconf import OmegaConf, open_dict

    from llmtune.rundir import RUN_MARKERS, lock_holder

    path = out / method / f"seed-{seed}"
    overrides = [*spec.overrides, f"peft={method}", f"seed={seed}", f"output_dir={path}"]
    holder = lock_holder(path)
    if holder is not None:
        raise UserError(f"compare: {path} ({method}, seed {seed}) is in use by another llmtune run (pid {holder}); wait for it to end, or pick another output_dir.")
    if (path / "metrics.json").is_file():
        run_cfg = cfg.copy()
        with open_dict(run_cfg):
            run_cfg.seed, run_cfg.output_dir = seed, str(path)
        # Through YAML as the run wrote its config.yaml, so values compare in the same types.
        _check_same_settings(path, yaml.safe_load(OmegaConf.to_yaml(run_cfg, resolve=True)), method, seed)
        return Planned(method, seed, path, overrides, done=True)
    if any((path / m).exists() for m in RUN_MARKERS):  # an unfinished run: replaced, from step 0
        overrides.append("trainer.overwrite_output_dir=true")
    return Planned(method, seed, path, overrides)


def _check_same_settings(path: Path, wanted: dict, method: str, seed: int) -> None:
    """A finished run counts only if it trained what this compare asks for."""
    saved = _read_yaml(path / "config.yaml")
    if saved is None:
        raise UserError(f"compare: {path} has a metrics.json but no readable config.yaml, so whether it is the {method} run of seed {seed} asked for is unknown; move it away or pick another output_dir.")
    differ = differing_settings(saved, wanted)
    if differ:
        shown = ", ".join(f"{k}: {flat_settings(saved).get(k)} -> {flat_settings(wanted).get(k)}" for k in differ[:3])
        more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
        raise UserError(f"compare: {path} holds a finished {method} run (seed {seed}) with other settings ({shown}{more}); "
                        "give the same settings to continue that compare, or pick a new output_dir.")


# --------------------------------------------------------------------------- running
Runner = Callable[[Planned], "str | None"]  # runs one planned run; its error line, or None


def run_in_process(run: Planned) -> str | None:
    """One run in this process, as `llmtune finetune` runs it (the same checks, run_job)."""
    from llmtune import config
    from llmtune.job import run_job
    from llmtune.paths import conf_dir

    config.register_resolvers()
    try:
        run_job(config.preflight(str(conf_dir()), "finetune", run.overrides))
    except Interrupted:
        raise
    except UserError as exc:
        return _first_line(exc)
    except Exception as exc:  # noqa: BLE001 -- one method's crash must not lose the other runs; its traceback is printed
        traceback.print_exc()
        return f"{type(exc).__name__}: {_first_line(exc)}"
    finally:
        _release_logging()
    return None


def run_isolated(run: Planned) -> str | None:
    """One run in a child process (see the module docstring for why). The child runs
    run_in_process and writes its error line to a file; a child that dies says its exit code."""
    with tempfile.TemporaryDirectory(prefix="llmtune-compare-") as tmp:
        outcome = Path(tmp) / "outcome.json"
        code = "import sys; from llmtune.compare import _child; _child(sys.argv[1:])"
        child = subprocess.Popen([sys.executable, "-c", code, str(outcome), *run.overrides])
        try:
            returncode = child.wait()
        except KeyboardInterrupt:  # Ctrl-C reached the child too: let it stop cleanly
            child.wait()
            raise
        result = _read_json(outcome)
        if returncode in (130, 143):  # the child was stopped by SIGINT/SIGTERM: so is the compare
            raise Interrupted((result or {}).get("error") or "stopped by signal", returncode - 128)
        if result is not None:
            return result.get("error")
        killed = " (killed: out of memory?)" if returncode == -9 else ""
        return f"the run's process ended with exit code {returncode}{killed} before reporting; see the lines above and {run.path}/run.log"


def _child(argv: list[str]) -> None:
    """The child process of run_isolated: argv = [outcome file, *overrides]."""
    outcome, overrides = Path(argv[0]), argv[1:]
    try:
        error = run_in_process(Planned("", 0, Path(), overrides))
    except Interrupted as exc:
        outcome.write_text(json.dumps({"error": _first_line(exc)}))
        sys.exit(exc.exit_code)
    outcome.write_text(json.dumps({"error": error}))


def run_prompting(method: str, overrides: list[str], seed: int, run_dir: Path) -> dict:
    """A prompting baseline (no training): its metrics on the validation split, as metrics.json
    holds them ({"task", "main_metric", "greater_is_better", "validation": {...}, ...}).

    The evaluation is llmtune.prompting's, called through its command line (`llmtune evaluate
    prompting=zero_shot|few_shot ...`): of the compare's overrides it gets those it takes (model,
    task, data, prompting.*: prompting.k sets few_shot's demonstrations), and `seed` draws them."""
    prompting = _prompting_module(method)
    taken = prompting_args(prompting, overrides)
    run_dir.mkdir(parents=True, exist_ok=True)
    output = run_dir / "prompting.json"
    prompting.main([f"prompting={method}", *taken, f"prompting.seed={seed}", "split=validation", f"output={output}"])
    metrics = _read_json(output)
    if metrics is None or not isinstance(metrics.get("validation"), dict):
        raise UserError(f"compare: method {method}: llmtune.prompting wrote no validation metrics to {output}; run `llmtune evaluate prompting={method} ...` to see why.")
    return metrics


def prompting_args(prompting, overrides: list[str]) -> list[str]:
    """Of a compare's overrides, those the prompting command takes (model, task, data,
    prompting.*), as it takes them: what a baseline's row depends on."""
    return [o for o in map(_unprefixed, overrides) if _prompting_takes(prompting, o.partition("=")[0].lstrip("+~"))]


def _unprefixed(arg: str) -> str:
    """prompting.max_new_tokens=N and prompting.batch_size=N of a compare are the prompting
    command's own max_new_tokens= and batch_size= (on the compare's line, bare they would read
    as finetune keys)."""
    key, _, value = arg.partition("=")
    bare = key.removeprefix("prompting.")
    return f"{bare}={value}" if bare in UNPREFIXED else arg


def _prompting_takes(prompting, key: str) -> bool:
    """Whether `llmtune evaluate prompting=...` takes this key (trainer.* and the like it does not)."""
    if key in getattr(prompting, "KEYS", {}) and key not in ("prompting", "prompting.seed", "prompting.seeds", "split", "output"):
        return True
    return key.split(".")[0] in getattr(prompting, "HYDRA_KEYS", ()) and key != "seed"


def _prompting_module(method: str):
    """llmtune.prompting, or one line saying the baseline cannot run (checked before training)."""
    import importlib

    try:
        module = importlib.import_module("llmtune.prompting")
    except ImportError:
        module = None
    if module is None or not callable(getattr(module, "main", None)):
        raise UserError(f"compare: method {method}: prompting baselines need llmtune.prompting (`llmtune evaluate ... prompting={method}`), "
                        f"which this llmtune lacks; drop {method} from methods=.")
    return module


def _plan_prompting(method: str, seed: int, spec: Spec, out: Path) -> Planned:
    path = out / method / f"seed-{seed}"
    overrides = prompting_overrides(spec)
    record = (_read_json(path / "metrics.json") or {}).get("prompting") or {}
    # Kept when what the baseline takes is the same: trainer.* and the like do not change it.
    module = _prompting_module(method)
    same = isinstance(record.get("overrides"), list) and prompting_args(module, record["overrides"]) == prompting_args(module, overrides)
    done = same and record.get("seed") == seed
    return Planned(method, seed, path, overrides, done=done)


def prompting_overrides(spec: Spec) -> list[str]:
    """What a prompting row gets: the compare's overrides and prompting.* keys, with
    prompting.model=NAME (a causal LM to prompt beside an encoder that is tuned) in place of
    the compare's model= and model.* overrides."""
    def bare(arg: str) -> str:
        return arg.partition("=")[0].lstrip("+~")

    chosen = [a.partition("=")[2] for a in spec.prompting if bare(a) == "prompting.model"]
    rest = [a for a in spec.prompting if bare(a) != "prompting.model"]
    if not chosen:
        return [*spec.overrides, *rest]
    return [*(o for o in spec.overrides if bare(o).split(".")[0] != "model"), f"model={chosen[-1]}", *rest]


def _prompting_runner(run: Planned) -> str | None:
    """Runs a prompting baseline and writes its metrics.json (trainable parameters: 0)."""
    try:
        metrics = run_prompting(run.method, run.overrides, run.seed, run.path)
    except Interrupted:
        raise
    except UserError as exc:
        return _first_line(exc)
    except Exception as exc:  # noqa: BLE001 -- as for a training run: the other rows go on
        traceback.print_exc()
        return f"{type(exc).__name__}: {_first_line(exc)}"
    finally:
        _release_logging()
    metrics = {**metrics, "params": {**(metrics.get("params") or {}), "trainable": 0},
               "prompting": {**(metrics.get("prompting") or {}), "method": run.method, "seed": run.seed, "overrides": run.overrides}}
    (run.path / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return None


def run_all(planned: list[Planned], runner: Runner, say: Callable[[str], None]) -> list[RunResult]:
    """Every planned run in order (finished ones kept); a failed run is reported in one line
    and the others go on. A stop signal ends the compare: the caller writes what finished."""
    todo = [p for p in planned if not p.done]
    errors: dict[int, str] = {}
    for i, run in enumerate(planned):
        if run.done:
            say(f"compare: {run.method} seed {run.seed}: finished already, kept ({run.path})")
            continue
        say(f"compare: run {todo.index(run) + 1}/{len(todo)}: {run.method} seed {run.seed} -> {run.path}")
        error = (_prompting_runner if run.method in PROMPTING else runner)(run)
        if error:
            errors[i] = error
            print(f"compare: {run.method} seed {run.seed} failed: {error}", file=sys.stderr)
    return [_result(p, errors.get(i, "")) for i, p in enumerate(planned)]


def _result(run: Planned, error: str) -> RunResult:
    result = read_run(run.path, run.method, run.seed)
    if error:
        result.error, result.metrics = error, None
    return result


def _release_logging() -> None:
    """Close the handlers a run attached to the llmtune logger (its run.log): the next run, or
    the compare's own lines, must not write into it."""
    import logging

    logger = logging.getLogger("llmtune")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


# --------------------------------------------------------------------------- reading runs
def read_run(path: Path, method: str | None = None, seed: int | None = None) -> RunResult:
    """A run directory as the table reads it; method and seed from the run when not given."""
    metrics = _read_json(path / "metrics.json")
    cfg = _read_yaml(path / "config.yaml")
    if method is None:
        method = method_of(path, metrics, cfg)
    if seed is None and cfg is not None:
        seed = cfg.get("seed")
    error = "" if metrics else "no metrics.json (the run failed or has not finished)"
    return RunResult(method, seed, path, metrics, cfg, error)


def method_of(path: Path, metrics: dict | None, cfg: dict | None) -> str:
    """The method's name as conf/peft names it: a prompting record, final/llmtune.json's
    `peft`, or the option of conf/peft whose _target_ the run's config names."""
    prompting = (metrics or {}).get("prompting") or {}
    if prompting.get("method"):
        return str(prompting["method"])
    info = _read_json(path / "final" / "llmtune.json") or {}
    if info.get("peft"):
        return str(info["peft"])
    target = ((cfg or {}).get("peft") or {}).get("_target_")
    if target:
        from llmtune.paths import conf_dir

        for option in sorted((conf_dir() / "peft").glob("*.yaml")):
            if (_read_yaml(option) or {}).get("_target_") == target:
                return option.stem
        return str(target).rsplit(".", 1)[-1].lower()
    return "unknown"


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories: each path that is one (config.yaml or metrics.json in it), or every run
    below it (a compare directory, a multirun sweep)."""
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise UserError(f"compare: runs= lists {path}, which is not a directory; list run directories (or a compare or sweep directory).")
        if _is_run(path):
            found.append(path)
            continue
        below = sorted({p.parent for pattern in ("metrics.json", "config.yaml") for p in path.rglob(pattern)
                        if not {".hydra", "final", "checkpoints"} & set(p.relative_to(path).parts[:-1]) and _is_run(p.parent)})
        if not below:
            raise UserError(f"compare: {path} holds no run (no config.yaml or metrics.json in it or below); list run directories.")
        found += below
    return list(dict.fromkeys(found))


def _is_run(path: Path) -> bool:
    return (path / "metrics.json").is_file() or (path / "config.yaml").is_file()


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _read_yaml(path: Path) -> dict | None:
    import yaml

    try:
        value = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return value if isinstance(value, dict) else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------- the verb
def compare(spec: Spec, runner: Runner | None = None, say: Callable[[str], None] = print) -> tuple[Path, Table]:
    """Plan, run what is not finished, write and print the table. A stop signal writes the
    table of what finished, then stops; failed runs are rows marked failed and end the
    command with exit code 1 once the table is written."""
    out, planned = plan(spec)
    runner = runner or (run_isolated if spec.isolate else run_in_process)
    note = "" if spec.isolate else SHARED_PROCESS_NOTE
    try:
        results = run_all(planned, runner, say)
    except (KeyboardInterrupt, Interrupted) as exc:
        finished = [r for r in (read_run(p.path, p.method, p.seed) for p in planned) if r.metrics]
        if finished:
            _finish(finished, out, spec.methods, say, note)
        raise Interrupted(f"compare stopped by a signal; run the same command with output_dir={out} to continue "
                          f"(the {len(finished)} finished run(s) are kept; the stopped one starts again)",
                          exc.exit_code - 128 if isinstance(exc, Interrupted) else 2) from None
    table = _finish(results, out, spec.methods, say, note)
    failed = [r for r in results if r.error]
    if failed:
        names = ", ".join(f"{r.method} seed {r.seed}" for r in failed)
        error = UserError(f"compare: {len(failed)} of {len(results)} runs failed ({names}); the table marks them. "
                          f"Run the same command with output_dir={out} to run them again (finished runs are kept).")
        error.exit_code = 1
        raise error
    return out, table


def compare_runs(paths: list[Path], output_dir: Path | None, say: Callable[[str], None] = print) -> tuple[Path, Table]:
    """The table of runs that exist (runs=[...]), grouped by method; nothing trains."""
    results = [read_run(p) for p in find_runs(paths)]
    if not any(r.metrics for r in results):
        raise UserError(f"compare: none of the {len(results)} run(s) has finished (no metrics.json); nothing to compare.")
    task = next(str(r.metrics.get("task")) for r in results if r.metrics)
    out = (output_dir or Path("runs") / "compare" / task / _stamp()).expanduser().resolve()
    from llmtune.rundir import check_output_dir

    check_output_dir(out)
    table = _finish(results, out, None, say)
    return out, table


def _finish(results: list[RunResult], out: Path, order: list[str] | None, say: Callable[[str], None], note: str = "") -> Table:
    table = build_table(results, order)
    table.note = note if "RSS" in table.memory else ""  # CUDA's peak is reset for each run
    show(table)
    varying = varying_settings(results)
    if varying:
        say(f"note: the runs also differ in {', '.join(varying[:6])}{' ...' if len(varying) > 6 else ''}: the rows may not compare like with like")
    try:
        written = write(table, out)
    except ImportError as exc:  # matplotlib: the table stands without its plot
        written = [out / "compare.csv", out / "compare.md"]
        say(f"no plot ({exc.name} is not installed: pip install matplotlib)")
    say(f"wrote {', '.join(p.name for p in written)} to {out}")
    return table
