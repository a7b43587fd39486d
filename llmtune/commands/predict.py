"""`llmtune predict`: a trained run's predictions for new inputs, one JSON line each.

Every input is read and checked before anything is predicted, so a bad line 10,000 is one
error line and no output at all, not half a file. Predictions stream out in input order while
later inputs are still being predicted (llmtune.predicting sorts each window of inputs by
length); an output file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

from pathlib import Path

from llmtune.commands._args import describe

HELP = "predictions of a trained run (final/, run dir or checkpoint) for new inputs, as JSON lines"
STDIO = Path("-")
KEYS = {
    "input": (Path, None, "the inputs: a .jsonl file (one JSON text or object a line), a .txt file (one text a line), or - for stdin"),
    "output": (Path, STDIO, "where the JSON lines go: a file (replaced only once complete) or - for stdout"),
    "format": (("auto", "jsonl", "txt"), "auto", "how to read input: auto goes by the suffix; for stdin, jsonl if the first line starts with {"),
    "batch_size": (int, 32, "inputs per forward pass (inputs of similar length are batched together)"),
    "device": (("auto", "cpu", "cuda"), "auto", "auto: cuda when a GPU is visible, else cpu"),
}
USAGE = f"""\
usage: llmtune predict PATH input=FILE|- [output=FILE|-] [key=value ...] [task params]

PATH is a run's final/, a run directory or a checkpoints/step-N folder. Each non-blank input
line is one input: in .jsonl a JSON string or an object (ner: {{"text": ...}} or {{"tokens": [...]}};
classification: {{"text": ..., "text_pair": ...}}; sft: {{"prompt": ...}} or {{"messages": [...]}};
qa: {{"question": ..., "context": ...}}; summarization, translation: {{"source": ...}}), in .txt
the line's text. Blank lines are skipped. Each
output line is the prediction for one input, in input order, with "line": the input's line number, e.g.
  {{"line": 1, "entities": [{{"type": "PER", "text": "Ada", "start": 0, "end": 3, "score": 0.98}}]}}
  {{"line": 2, "label": "positive", "score": 0.91, "probabilities": {{...}}}}
  {{"line": 3, "answer": "Lima", "start": 52, "end": 56, "score": 0.87, "no_answer": false, "null_score_diff": -4.1}}
A bad input line stops the command (exit 2) before anything is written.

arguments:
{describe(KEYS)}

task params: each task's own (its predict_params), checked once the run is loaded; a wrong one
is refused with the list, e.g. top_k=5 for mlm; max_new_tokens=64 temperature=0.0 (greedy)
top_p=1.0 for clm and sft; max_new_tokens=64 num_beams=4 length_penalty=1.0 no_repeat_ngram_size=3
for summarization and translation.

examples:
  llmtune predict runs/ner/final input=new.jsonl output=preds.jsonl
  echo "Ada Lovelace lived in London." | llmtune predict runs/ner/final input=-
  llmtune predict runs/sft/final input=prompts.txt max_new_tokens=128
"""


def main(argv: list[str]) -> None:
    from llmtune.commands._args import parse
    from llmtune.errors import UserError
    from llmtune.trained import load_trained, resolve_device
    from llmtune.ui.console import setup_logging

    static, extra = _split(argv)
    args = parse(static, KEYS, verb="predict", positional="PATH")
    if args.input is None:
        raise UserError("predict: input=FILE is required: a .jsonl or .txt file, or input=- for stdin; see `llmtune predict --help`.")
    if args.batch_size < 1:
        raise UserError(f"predict: batch_size={args.batch_size}: must be 1 or more.")
    _check_output(args.output, args.input)
    # Every line is parsed before the model loads: a malformed file fails in a second.
    name, items = read_items(args.input, args.format)
    setup_logging(is_main=True)
    trained = load_trained(args.path, resolve_device(args.device, "predict"))
    params = task_params(extra, trained.task)
    rows = [trained.task.read_input(item, f"{name} line {number}") for number, item in items]
    write_predictions(trained, rows, [number for number, _ in items], params, args)


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the verb's own arguments, key=value pairs left for the task's params). A key close to
    one of the verb's own (inptu=) stays with them, so its did-you-mean comes at once, not
    after the model has loaded."""
    from llmtune.errors import closest

    static, extra = [], []
    for arg in argv:
        key, eq, _ = arg.partition("=")
        (extra if eq and key not in KEYS and closest(key, KEYS) is None else static).append(arg)
    return static, extra


def _check_output(output: Path, source: Path) -> None:
    from llmtune.errors import UserError

    if output == STDIO:
        return
    if output.is_dir():
        raise UserError(f"predict: output={output} is a directory; name a file, e.g. output={output / 'predictions.jsonl'}.")
    if source != STDIO and output.resolve() == source.resolve():
        raise UserError(f"predict: output={output} is the input file; write the predictions to another file.")


# ------------------------------------------------------------------------------ input
def read_items(source: Path, fmt: str) -> tuple[str, list[tuple[int, object]]]:
    """(the input's name for messages, [(line number, JSON value or text)] of its non-blank
    lines); a malformed line is a UserError naming the file and line."""
    import sys

    from llmtune.errors import UserError

    if source == STDIO:
        name, text = "stdin", sys.stdin.read()
    else:
        name = str(source)
        if not source.is_file():
            raise UserError(f"predict: input={source}: no such file; name a .jsonl or .txt file, or input=- for stdin.")
        try:
            text = source.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"predict: input={source} is not UTF-8 text (byte {exc.start}); save it as UTF-8.") from None
    # split("\n"), not splitlines(): line numbers must match what an editor or `wc -l` shows.
    lines = [(number, line.rstrip("\r")) for number, line in enumerate(text.split("\n"), start=1)]
    lines = [(number, line) for number, line in lines if line.strip()]
    if _format(source, fmt, lines) == "txt":
        return name, lines
    return name, [(number, _json_line(line, name, number)) for number, line in lines]


def _format(source: Path, fmt: str, lines: list[tuple[int, str]]) -> str:
    from llmtune.errors import UserError

    if fmt != "auto":
        return fmt
    if source == STDIO:  # no suffix to go by: JSON lines are objects, so they start with {
        return "jsonl" if lines and lines[0][1].lstrip().startswith("{") else "txt"
    suffix = source.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".txt":
        return "txt"
    raise UserError(f"predict: input={source}: cannot tell its format from the suffix {suffix or '(none)'}; use a .jsonl or .txt file, or say format=jsonl or format=txt.")


def _json_line(line: str, name: str, number: int):
    import json

    from llmtune.errors import UserError

    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{name} line {number}: not valid JSON ({exc.msg}, column {exc.colno}); each line is one JSON text or object (for plain text lines use a .txt file or format=txt).") from None


# ------------------------------------------------------------------------------ task params
def task_params(extra: list[str], task) -> dict:
    """The task's predict params from `key=value` pairs, typed like the task's sample values;
    an unknown key is one line with the closest valid one."""
    from llmtune.commands._args import convert
    from llmtune.errors import UserError, did_you_mean
    from llmtune.predicting import param_types

    types = param_types(task)
    params: dict = {}
    for arg in extra:
        key, _, raw = arg.partition("=")
        if key not in types:
            own = ", ".join(f"{k}={v}" for k, v in task.predict_params.items()) or "none"
            raise UserError(f"predict: unknown argument '{key}'.{did_you_mean(key, [*KEYS, *types])} Arguments: {', '.join(KEYS)}; params of task={task.name}: {own}.")
        if key in params:
            raise UserError(f"predict: {key} is given twice; give it once.")
        value = convert(key, raw, types[key], "predict")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise UserError(f"predict: {key}={raw}: must be 0 or more.")
        params[key] = value
    return params


# ------------------------------------------------------------------------------ output
def write_predictions(trained, rows: list[dict], numbers: list[int], params: dict, args) -> None:
    """Stream the predictions as JSON lines to stdout, or to a temporary file renamed to
    `args.output` once every line is written (a failed run leaves no partial file)."""
    import json
    import logging
    import os
    import sys

    from llmtune.predicting import iter_predictions

    if not rows:
        logging.getLogger("llmtune").warning("predict: %s has no non-blank lines; nothing to predict.", args.input)
    with _progress(len(rows), enabled=args.output != STDIO or not sys.stdout.isatty()) as advance:
        predictions = iter_predictions(trained, rows, params, args.batch_size, progress=advance)
        lines = (json.dumps({"line": number, **prediction}, ensure_ascii=False) + "\n" for number, prediction in zip(numbers, predictions, strict=True))
        if args.output == STDIO:
            sys.stdout.writelines(lines)
            sys.stdout.flush()
            return
        target = args.output
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
        try:
            with partial.open("w", encoding="utf-8") as f:
                f.writelines(lines)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    logging.getLogger("llmtune").info("wrote %d predictions to %s", len(rows), target)


class _progress:
    """A progress bar on stderr when it is a terminal (and stdout is not the same terminal
    taking the output); entering gives `advance(n)`, or a no-op off the terminal."""

    def __init__(self, total: int, enabled: bool) -> None:
        from llmtune.ui.console import console

        self.total, self.bar = total, None
        if enabled and console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console, transient=True)

    def __enter__(self):
        if self.bar is None:
            return lambda n: None
        self.bar.start()
        task = self.bar.add_task("predict", total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
