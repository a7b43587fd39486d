"""Summaries, tables, the JSON file and the command line of `llmtune bench`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

from llmtune.bench.cases import (
    CPU_CASES,
    DEFAULT_OUT,
    DEFAULT_PEAK_FLOPS,
    MODELS,
    RUNNERS,
    Case,
    cpu_cases,
)
from llmtune.bench.measure import _free_cuda
from llmtune.bench.runners import (
    Prepared,
    RunRecord,
    prepare,
    run_hf,
    run_llmtune,
    run_raw,
)


# --------------------------------------------------------------------------- summaries
def summarize(rec: RunRecord, p: Prepared, peak_flops: float) -> dict:
    c = rec.clock
    skip = min(p.case.warmup, max(len(c.times) - 2, 0))
    times, tokens = c.times[skip:], c.tokens[skip:]
    measured = sum(times)
    out = {
        "steps": len(c.times),
        "warmup_steps_skipped": skip,
        "tokens_per_s": round(sum(tokens) / measured, 1) if measured > 0 else None,
        "samples_per_s": round(len(times) * p.case.batch_size / measured, 2) if measured > 0 else None,
        "step_ms_median": round(1e3 * statistics.median(times), 2) if times else None,
        "step_ms_p90": round(1e3 * _quantile(times, 0.9), 2) if times else None,
        "first_step_ms": round(1e3 * c.times[0], 1) if c.times else None,
        "wall_s": round(rec.wall_s, 3),
        "tokens_trained": sum(c.tokens),
        "padding_fraction": round(1 - sum(c.tokens) / sum(c.padded), 4) if sum(c.padded) else None,
        "loss_first": round(c.losses[0], 4) if c.losses else None,
        "loss_last": round(statistics.fmean(c.losses[-5:]), 4) if c.losses else None,
        **rec.memory,
        **rec.extra,
    }
    if p.device.type == "cuda" and out["tokens_per_s"]:
        flops_per_token = 4 * p.params + 2 * p.trainable
        out["model_tflops_per_s"] = round(flops_per_token * out["tokens_per_s"] / 1e12, 2)
        out["mfu"] = round(flops_per_token * out["tokens_per_s"] / peak_flops, 4)
    return out


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _length_stats(lengths: list[int]) -> dict:
    if not lengths:
        return {}
    return {
        "median": statistics.median(lengths),
        "mean": round(statistics.fmean(lengths), 1),
        "p90": _quantile(lengths, 0.9),
        "max": max(lengths),
    }


def ratios(runs: dict) -> dict:
    """Every llmtune run (and variant) against every other runner, per measure."""
    out: dict[str, dict] = {"tokens_per_s": {}, "step_ms_median": {}, "wall_s": {}}
    ours = {n: r for n, r in runs.items() if n.startswith("llmtune") and "error" not in r}
    for mine, base in ours.items():
        for name, r in runs.items():
            if name.startswith("llmtune") or "error" in r:
                continue
            for key in out:
                if base.get(key) and r.get(key):
                    out[key][f"{mine}/{name}"] = round(base[key] / r[key], 3)
    return out


def run_case(case: Case, workdir: Path, *, device: str = "cpu", peak_flops: float = DEFAULT_PEAK_FLOPS, say=print) -> dict:
    """Prepare one case, run every runner on it, and return its JSON-ready results."""
    say(f"[{case.name}] preparing ({case.description or case.command})")
    p = prepare(case, workdir, device)
    say(f"[{case.name}] {len(p.train)} training examples, {p.params:,} parameters ({p.trainable:,} trainable), prep {p.prep_s:.1f}s")
    runs: dict[str, dict] = {}
    order = [r for r in RUNNERS if r in case.runners]
    order += [f"llmtune+{v}" for v in case.variants] if "llmtune" in order else []
    for name in order:
        say(f"[{case.name}] {name}: {case.steps} steps of {case.batch_size}")
        try:
            if name.startswith("llmtune+"):
                variant = name.split("+", 1)[1]
                extra = replace(case, overrides=[*case.overrides, *case.variants[variant]], variants={})
                vp = prepare(extra, workdir / f"variant-{variant}", device)
                runs[name] = summarize(run_llmtune(vp), vp, peak_flops)
                del vp
                continue
            if name == "llmtune":
                rec = run_llmtune(p)
            elif name == "raw":
                rec = run_raw(p)
            else:
                rec = run_hf(p, grouped=name == "hf_group_by_length")
            runs[name] = summarize(rec, p, peak_flops)
        except Exception as exc:  # noqa: BLE001 — a broken runner is reported, the others still run
            if os.environ.get("LLMTUNE_DEBUG"):
                raise
            runs[name] = {"error": f"{type(exc).__name__}: {exc}".strip().splitlines()[0], "traceback": traceback.format_exc(limit=6)}
            say(f"[{case.name}] {name} FAILED: {runs[name]['error']}")
            if name == "llmtune" and p.accelerator is not None:
                p.accelerator.free_memory()  # drop the engine's references to the failed run
                p.trainer = p.accelerator = None
            _free_cuda(p.device.type == "cuda")
    result = {
        "description": case.description,
        "command": f"llmtune {case.command} " + " ".join(case.overrides),
        "settings": {
            "batch_size": case.batch_size,
            "steps": case.steps,
            "warmup_skipped": case.warmup,
            "precision": case.precision,
            "device": str(p.device),
            "lr": p.lr,
            "weight_decay": p.weight_decay,
            "schedule": p.schedule,
            "warmup_steps": p.warmup_steps,
            "max_grad_norm": p.max_grad_norm,
            "seed": p.seed,
        },
        "data": {"examples": len(p.train), "token_length": _length_stats(p.lengths)},
        "model": {"class": type(p.initial).__name__, "params": p.params, "trainable": p.trainable},
        "prep_s": round(p.prep_s, 2),
        "runs": runs,
        "ratios": ratios(runs),
    }
    del p
    _free_cuda(device == "cuda")
    return result


# --------------------------------------------------------------------------- output
def case_table(name: str, result: dict):
    from rich.table import Table

    runs = result["runs"]
    cuda = result["settings"]["device"].startswith("cuda")
    base = runs.get("llmtune", {})
    table = Table(title=f"{name}: {result['description']}", title_justify="left")
    for col in ("runner", "tok/s", "step ms (med)", "wall s", "peak mem MB", "pad %", "loss first→last", "llmtune ÷ this (tok/s)"):
        table.add_column(col, justify="left" if col == "runner" else "right")
    if cuda:
        table.add_column("MFU", justify="right")
    for runner, r in runs.items():
        if "error" in r:
            table.add_row(runner, f"[red]error: {r['error'][:60]}[/red]", *[""] * (len(table.columns) - 2))
            continue
        mem = r.get("cuda_max_allocated_mb", r.get("peak_rss_growth_mb"))
        ratio = ""
        hf = runs.get("hf", {})
        if runner.startswith("llmtune+") and hf.get("tokens_per_s") and r.get("tokens_per_s"):
            ratio = f"{r['tokens_per_s'] / hf['tokens_per_s']:.2f}× hf"  # a variant against HF's default
        elif runner != "llmtune" and base.get("tokens_per_s") and r.get("tokens_per_s"):
            ratio = f"{base['tokens_per_s'] / r['tokens_per_s']:.2f}×"
        loss = f"{r['loss_first']:.3f}→{r['loss_last']:.3f}" if r.get("loss_first") is not None else "-"
        row = [
            runner,
            f"{r['tokens_per_s']:,.0f}",
            f"{r['step_ms_median']:.1f}",
            f"{r['wall_s']:.2f}",
            "-" if mem is None else f"{mem:,.0f}",
            f"{100 * (r['padding_fraction'] or 0):.1f}",
            loss,
            ratio or "-",
        ]
        if cuda:
            row.append(f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-")
        table.add_row(*row)
    lengths = result["data"]["token_length"]
    table.caption = (
        f"{result['data']['examples']} examples, tokens/example median {lengths.get('median')} p90 {lengths.get('p90')} max {lengths.get('max')}; "
        f"batch {result['settings']['batch_size']}, {result['settings']['steps']} steps (first {result['settings']['warmup_skipped']} not timed); "
        f"{result['model']['params']:,} params; prep {result['prep_s']}s"
    )
    return table


def environment(device: str, peak_flops: float) -> dict:
    import accelerate
    import torch
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    try:
        import peft

        info["peft"] = peft.__version__
    except ImportError:
        pass
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["peak_flops"] = peak_flops
    return info


def write_results(results: dict, out: Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(out)


def quiet_libraries() -> None:
    """Benchmark output is the tables: library and engine chatter goes to warnings only."""
    import warnings

    from llmtune.ui.console import setup_logging

    warnings.filterwarnings("ignore", category=FutureWarning)  # deprecation notes from libraries
    setup_logging(is_main=True)
    logging.getLogger("llmtune").setLevel(logging.WARNING)
    for name in ("transformers", "datasets", "accelerate", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import transformers

    transformers.utils.logging.set_verbosity_error()


def run_all(cases: list[Case], out: Path | None, *, device: str, peak_flops: float, argv: list[str], budget_s: float | None = None) -> dict:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a log file: do not squeeze the table into 80 columns
    say = lambda msg: console.print(f"[dim]{msg}[/dim]", highlight=False)  # noqa: E731
    results = {"meta": {"argv": argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), **environment(device, peak_flops)}, "cases": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llmtune-bench-") as tmp:
        for case in cases:
            if budget_s is not None and time.perf_counter() - started > budget_s:
                results["cases"][case.name] = {"skipped": f"time budget of {budget_s:.0f}s used up"}
                say(f"[{case.name}] skipped: time budget used up")
                continue
            workdir = Path(tmp) / case.name
            workdir.mkdir()
            try:
                result = run_case(case, workdir, device=device, peak_flops=peak_flops, say=say)
            except Exception as exc:  # noqa: BLE001 — preparation failed: report, go on
                if os.environ.get("LLMTUNE_DEBUG"):
                    raise
                result = {"error": f"{type(exc).__name__}: {exc}".strip().splitlines()[0], "traceback": traceback.format_exc(limit=8)}
                say(f"[{case.name}] FAILED: {result['error']}")
            results["cases"][case.name] = result
            if "runs" in result:
                console.print(case_table(case.name, result))
            if out is not None:
                write_results(results, out)  # after every case: a crash keeps what was measured
    results["meta"]["total_s"] = round(time.perf_counter() - started, 1)
    try:
        import resource

        results["meta"]["process_max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    except ImportError:
        pass
    if out is not None:
        write_results(results, out)
        console.print(f"results: {out}")
    return results


def failures(results: dict) -> list[str]:
    found = []
    for name, case in results["cases"].items():
        if "error" in case:
            found.append(name)
        for runner, r in case.get("runs", {}).items():
            if "error" in r:
                found.append(f"{name}/{runner}")
    return found


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="llmtune bench",
        description="Train the same model on the same data with llmtune, HF Trainer (random and group_by_length) and a plain "
        "PyTorch loop; print a table per case and write the numbers as JSON. Reports, never asserts.",
    )
    parser.add_argument("--cases", default=",".join(CPU_CASES), help=f"comma-separated cases (default: {','.join(CPU_CASES)})")
    parser.add_argument(
        "--steps", type=int, default=8, help="optimizer steps per run (default: 8, a few minutes on 2 cores; more gives steadier numbers)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="first step intervals left out of medians and tokens/s (default: 2)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="samples per optimizer step, the same for every runner (default: 8; llmtune's own default is 16)",
    )
    parser.add_argument("--size", choices=sorted(MODELS), default="small", help="model size built from config (default: small)")
    parser.add_argument("--examples", type=int, default=2000, help="examples generated for cls and ner (default: 2000)")
    parser.add_argument("--runners", default=",".join(RUNNERS), help=f"comma-separated runners (default: {','.join(RUNNERS)})")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to train (default: cpu)")
    parser.add_argument("--precision", choices=("no", "bf16", "fp16"), default="no", help="mixed precision (default: no)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice); 1 is steadier on a busy machine"
    )
    parser.add_argument(
        "--peak-flops", type=float, default=DEFAULT_PEAK_FLOPS, help="peak FLOP/s for MFU on CUDA (default: 989e12, H100/H200 bf16 dense)"
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"JSON results file (default: {DEFAULT_OUT})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    from llmtune.errors import UserError

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    for key, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)
    if args.steps < 2:
        raise UserError("bench: --steps must be at least 2 (one step interval is timed after the first).")
    runners = tuple(r.strip() for r in args.runners.split(",") if r.strip())
    bad = [r for r in runners if r not in RUNNERS]
    if bad:
        raise UserError(f"bench: unknown runner '{bad[0]}'; runners: {', '.join(RUNNERS)}.")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("bench: --device cuda but no CUDA GPU is visible; leave --device at cpu.")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    quiet_libraries()
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    cases = cpu_cases(
        names,
        size=args.size,
        steps=args.steps,
        warmup=args.warmup,
        batch_size=args.batch_size,
        examples=args.examples,
        precision=args.precision,
    )
    for case in cases:
        case.runners = runners
    results = run_all(cases, Path(args.out), device=args.device, peak_flops=args.peak_flops, argv=["llmtune", "bench", *argv])
    failed = failures(results)
    if failed:
        raise UserError(
            f"bench: {len(failed)} run(s) failed: {', '.join(failed)}; their errors are in {args.out} (LLMTUNE_DEBUG=1 for tracebacks)."
        )
    return results
