"""`llmtune serve PATH`: a trained run behind the HTTP JSON API of llmtune/serving.py.

`TrainedPredictor` is the one piece between the two: it gives the server the task's name, its
predict params and their types, and predictions through the same path as `llmtune predict`
(task.read_input, then llmtune.predicting's length-sorted batches of task.predict).
"""

from __future__ import annotations

from llmtune.commands._args import describe
from llmtune.serving import Limits  # stdlib-only at import time, like this module

LIMITS = Limits()  # the server's defaults, shown and passed on as they are
MAX_INPUT_CHARS = 10_000

HELP = "serve a trained run over HTTP: POST /predict, GET /health (needs llmtune[serve])"
KEYS = {
    "port": (int, 8000, "TCP port"),
    "host": (str, "127.0.0.1", "address to listen on; anything but loopback exposes the model (no authentication)"),
    "device": (("auto", "cpu", "cuda"), "auto", "auto: cuda when a GPU is visible, else cpu"),
    "max_inputs": (int, LIMITS.max_inputs, "inputs per request (more: 413)"),
    "max_body_bytes": (int, LIMITS.max_body_bytes, "request body size in bytes (larger: 413)"),
    "max_batch": (int, LIMITS.max_batch, "inputs of concurrent requests merged into one forward pass"),
    "batch_wait_ms": (float, LIMITS.batch_wait_ms, "how long a request waits for others to join its batch"),
    "max_input_chars": (int, MAX_INPUT_CHARS, "longer texts are cut to this many characters (the response lists which)"),
}
USAGE = f"""\
usage: llmtune serve PATH [port=8000] [host=127.0.0.1] [key=value ...]

PATH is a run's final/, a run directory or a checkpoints/step-N folder. Needs the serve extra:
pip install 'llmtune[serve]'.

  POST /predict  {{"inputs": ["Ada Lovelace lived in London."], "params": {{}}}}
                 -> {{"outputs": [{{"entities": [...]}}], "truncated": []}}
  GET  /health   -> task, labels, PEFT method, path, params and limits

Inputs are what `llmtune predict` reads from a .jsonl line (a text, or the task's object);
params are the task's predict params (clm, sft: max_new_tokens, temperature, top_p; mlm: top_k).
A bad input gets a 422 with one line saying what is wrong.

arguments:
{describe(KEYS)}
"""


class TrainedPredictor:
    """A loaded run (llmtune.trained.TrainedRun) as a serving.Predictor."""

    def __init__(self, trained, max_input_chars: int = MAX_INPUT_CHARS, batch_size: int = LIMITS.max_batch) -> None:
        from llmtune.predicting import param_types

        self.trained = trained
        self.task = trained.task.name
        self.params = param_types(trained.task)
        self.max_input_chars = max_input_chars
        self.batch_size = batch_size

    def predict(self, inputs: list, **params) -> list[dict]:
        """Every input read first (a UserError naming `inputs[i]` becomes the request's 422),
        then predicted in batches of similar length."""
        from llmtune.predicting import predict_batched

        rows = [self.trained.task.read_input(item, f"inputs[{i}]") for i, item in enumerate(inputs)]
        return predict_batched(self.trained, rows, params, self.batch_size)

    def info(self) -> dict:
        trained = self.trained
        return {"task": self.task, "labels": list(trained.task.labels), "peft": trained.method.method,
                "path": str(trained.path), "kind": trained.kind}


def main(argv: list[str]) -> None:
    from llmtune.commands._args import parse
    from llmtune.errors import UserError
    from llmtune.serving import serve
    from llmtune.trained import load_trained, resolve_device
    from llmtune.ui.console import setup_logging

    args = parse(argv, KEYS, verb="serve", positional="PATH")
    # Every setting is checked before the model loads (seconds to minutes).
    limits = {k: args[k] for k in ("max_inputs", "max_body_bytes", "max_batch", "batch_wait_ms")}
    Limits.from_kwargs(**limits)
    if args.max_input_chars < 1:
        raise UserError(f"serve: max_input_chars={args.max_input_chars}: must be 1 or more.")
    if not 0 < args.port < 65536:
        raise UserError(f"serve: port={args.port}: must be a number from 1 to 65535, e.g. port=8000.")
    _require_serve_extra()
    device = resolve_device(args.device, "serve")
    setup_logging(is_main=True)
    trained = load_trained(args.path, device)
    serve(TrainedPredictor(trained, args.max_input_chars, args.max_batch), host=args.host, port=args.port, **limits)


def _require_serve_extra() -> None:
    import importlib.util

    from llmtune.errors import UserError
    from llmtune.serving import NEEDS_EXTRA

    if any(importlib.util.find_spec(name) is None for name in ("fastapi", "uvicorn")):
        raise UserError(NEEDS_EXTRA)
