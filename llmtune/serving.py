"""The HTTP layer of `llmtune serve`: a small JSON API over any `Predictor`.

    POST /predict  {"inputs": [...], "params": {...}}  ->  {"outputs": [...], "truncated": [...]}
    GET  /health                                       ->  {"status": "ok", "task": ..., "model": {...}, "limits": {...}}

What the model is and how it predicts lives behind `Predictor`; this module only turns HTTP into
`predictor.predict` calls, safely:

- requests that arrive close together are merged into one `predict` call (one worker task drains a
  queue and runs `predict` in a thread, so the event loop never blocks on the model);
- a bad request gets a 4xx with a one-line JSON message (`{"detail": "..."}`); a failing `predict`
  gets a 500 with one line and the traceback goes to the server log, never into the response;
- limits are on by default: loopback only, body size, inputs per request, characters per input.

FastAPI and uvicorn are an optional extra (`pip install 'llmtune[serve]'`); importing this module
does not need them, only `create_app` and `serve` do.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at run time
# (`request: fastapi.Request` inside create_app), and fastapi is only imported when an app is built.
import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from llmtune.errors import UserError, did_you_mean

if TYPE_CHECKING:
    from fastapi import FastAPI, Request

log = logging.getLogger("llmtune.serving")

NEEDS_EXTRA = "llmtune serve needs the serve extra: pip install 'llmtune[serve]'"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class Predictor(Protocol):
    """What the server needs from a loaded model. `predict` is only ever called from one thread
    at a time (the batching worker), so it need not be thread-safe."""

    task: str  # the task's name (conf/task/); shown by GET /health
    max_input_chars: int  # longer string inputs are cut to this many characters (and reported)
    params: dict[str, type]  # per-request keyword arguments `predict` accepts, e.g. {"max_new_tokens": int}

    def predict(self, inputs: list, **params: Any) -> list[dict]:
        """One dict per input, in order. An input is a str or a task-specific dict
        ({"text": ..., "text_pair": ...}, {"prompt": ...}, {"messages": [...]}). Raise UserError
        for an input the task cannot use: the request gets a 422 with its message."""
        ...

    def info(self) -> dict:
        """A JSON-able description of the model and run (task, labels, path, ...) for GET /health."""
        ...


@dataclass(frozen=True)
class Limits:
    """Server limits; every one can be set with `create_app(..., name=value)`."""

    max_body_bytes: int = 1 << 20  # larger request bodies get 413
    max_inputs: int = 64  # more inputs in one request get 413: split the request
    max_batch: int = 64  # inputs merged into one predict call (a single request is never split)
    batch_wait_ms: float = 10.0  # how long the first queued request waits for others to join it

    @classmethod
    def from_kwargs(cls, **values: Any) -> "Limits":
        """Limits from keyword arguments (strings from the command line are converted); a wrong
        name or a non-positive value is a UserError."""
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        parsed = {}
        for name, value in values.items():
            if name not in fields:
                raise UserError(f"unknown serve option '{name}'.{did_you_mean(name, fields)} Valid options: {', '.join(fields)}.")
            kind = fields[name]
            try:
                parsed[name] = kind(value)
            except (TypeError, ValueError):
                parsed[name] = None
            if parsed[name] is None or parsed[name] <= 0 or isinstance(value, bool):
                raise UserError(f"serve option {name}={value!r} must be a positive {kind.__name__}.")
        return cls(**parsed)


# ----------------------------------------------------------------------------- batching


@dataclass
class _Pending:
    inputs: list
    params: dict
    future: asyncio.Future


class Batcher:
    """Merges concurrent requests into few `predict` calls.

    One worker task takes the first queued request, waits up to `wait_s` for others (or until
    `max_batch` inputs are gathered), then calls `predict` once per distinct `params` and hands
    each request its own slice of the outputs. If a merged call fails, its requests are retried
    one by one, so one bad input fails only its own request."""

    def __init__(self, predictor: Predictor, max_batch: int, wait_s: float) -> None:
        self.predictor = predictor
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._held: _Pending | None = None  # a request that did not fit in the last batch
        self._worker: asyncio.Task | None = None

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker

    async def submit(self, inputs: list, params: dict) -> list[dict]:
        """The outputs for these inputs, computed in some merged batch."""
        if self._worker is None or self._worker.done():
            raise RuntimeError("the batching worker is not running")
        pending = _Pending(inputs, params, asyncio.get_running_loop().create_future())
        await self.queue.put(pending)
        return await pending.future

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            for group in _group_by_params(batch):
                await self._serve_group(group)

    async def _collect(self) -> list[_Pending]:
        """The next batch: the first waiting request plus whatever joins within the window."""
        first, self._held = self._held or await self.queue.get(), None
        batch, size = [first], len(first.inputs)
        deadline = asyncio.get_running_loop().time() + self.wait_s
        while size < self.max_batch:
            left = deadline - asyncio.get_running_loop().time()
            try:
                nxt = self.queue.get_nowait() if left <= 0 else await asyncio.wait_for(self.queue.get(), left)
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
            if size + len(nxt.inputs) > self.max_batch:
                self._held = nxt  # starts the next batch instead
                break
            batch.append(nxt)
            size += len(nxt.inputs)
        return [p for p in batch if not p.future.done()]  # drop requests whose client went away

    async def _serve_group(self, group: list[_Pending]) -> None:
        if len(group) == 1:
            await self._serve_one(group[0])
            return
        try:
            outputs = await self._predict([x for p in group for x in p.inputs], group[0].params)
        except Exception:  # noqa: BLE001 — retried below, where each request gets its own error
            log.info("a merged batch of %d requests failed; retrying them one by one", len(group), exc_info=True)
            for pending in group:
                await self._serve_one(pending)
            return
        start = 0
        for pending in group:
            _settle(pending.future, result=outputs[start : start + len(pending.inputs)])
            start += len(pending.inputs)

    async def _serve_one(self, pending: _Pending) -> None:
        try:
            outputs = await self._predict(pending.inputs, pending.params)
        except Exception as exc:  # noqa: BLE001 — handed to the waiting request, which logs and answers it
            _settle(pending.future, error=exc)
        else:
            _settle(pending.future, result=outputs)

    async def _predict(self, inputs: list, params: dict) -> list[dict]:
        # In a thread: the model may take seconds and the event loop must keep accepting requests.
        outputs = await asyncio.to_thread(self.predictor.predict, inputs, **params)
        if not isinstance(outputs, list) or len(outputs) != len(inputs):
            got = len(outputs) if isinstance(outputs, list) else type(outputs).__name__
            raise RuntimeError(f"predict returned {got} outputs for {len(inputs)} inputs")
        return outputs


def _group_by_params(batch: list[_Pending]) -> list[list[_Pending]]:
    """Requests with the same generation params can share a predict call; others cannot."""
    groups: dict[str, list[_Pending]] = {}
    for pending in batch:
        groups.setdefault(json.dumps(pending.params, sort_keys=True), []).append(pending)
    return list(groups.values())


def _settle(future: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # the request was cancelled (client disconnected)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


# ----------------------------------------------------------------------------- request checks


class BadRequest(Exception):
    """A request the server refuses: an HTTP status and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_body(request: "Request", max_bytes: int) -> bytes:
    """The request body, refused with 413 once it passes `max_bytes` (without reading it all)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BadRequest(413, f"request body is {declared} bytes; the limit is {max_bytes} (max_body_bytes). Send fewer or shorter inputs.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise BadRequest(413, f"request body is over {max_bytes} bytes (max_body_bytes). Send fewer or shorter inputs.")
    return bytes(body)


def parse_request(body: bytes, predictor: Predictor, limits: Limits) -> tuple[list, dict]:
    """(inputs, params) from a /predict body, or BadRequest saying what is wrong and how to fix it."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f"request body is not valid JSON ({exc}). Send {{\"inputs\": [...]}}.") from None
    if not isinstance(data, dict):
        raise BadRequest(422, f"request body is a JSON {_json_type(data)}; send an object: {{\"inputs\": [...]}}.")
    for key in data:
        if key not in ("inputs", "params"):
            raise BadRequest(422, f"unknown field '{key}'.{did_you_mean(key, ['inputs', 'params'])} Send {{\"inputs\": [...], \"params\": {{...}}}}.")
    return _check_inputs(data.get("inputs"), limits.max_inputs), _check_params(data.get("params", {}), predictor.params)


def _check_inputs(inputs: Any, max_inputs: int) -> list:
    if inputs is None:
        raise BadRequest(422, "missing field 'inputs': send {\"inputs\": [\"some text\", ...]}.")
    if not isinstance(inputs, list):
        raise BadRequest(422, f"'inputs' is a JSON {_json_type(inputs)}; it must be a list, e.g. {{\"inputs\": [\"some text\"]}}.")
    if not inputs:
        raise BadRequest(422, "'inputs' is empty; send at least one input.")
    if len(inputs) > max_inputs:
        raise BadRequest(413, f"'inputs' has {len(inputs)} items; the limit is {max_inputs} per request (max_inputs). Split the request.")
    for i, item in enumerate(inputs):
        if not isinstance(item, (str, dict)):
            raise BadRequest(422, f"inputs[{i}] is a JSON {_json_type(item)}; each input is a string or an object.")
    return inputs


def _check_params(params: Any, allowed: dict[str, type]) -> dict:
    if not isinstance(params, dict):
        raise BadRequest(422, f"'params' is a JSON {_json_type(params)}; it must be an object, e.g. {{\"params\": {{}}}}.")
    for key, value in params.items():
        if key not in allowed:
            valid = ", ".join(allowed) or "none for this model"
            raise BadRequest(422, f"unknown param '{key}'.{did_you_mean(key, allowed)} Valid params: {valid}.")
        if not _fits(value, allowed[key]):
            raise BadRequest(422, f"param '{key}' is {json.dumps(value)}; it must be a JSON {_JSON_NAMES.get(allowed[key], allowed[key].__name__)}.")
    return params


def _fits(value: Any, kind: type) -> bool:
    # JSON has one number type: 3 is a fine float, but true is no number and 1.5 no int.
    if isinstance(value, bool) or kind is bool:
        return isinstance(value, bool) and kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def truncate(inputs: list, max_chars: int) -> tuple[list, list[int]]:
    """Inputs with every string (also inside an object) cut to `max_chars`, and the indexes of
    the inputs that were cut, so the response can say which."""
    cut: list[int] = []
    out = []
    for i, item in enumerate(inputs):
        short = _truncate_value(item, max_chars)
        if short != item:
            cut.append(i)
        out.append(short)
    return out, cut


def _truncate_value(value: Any, max_chars: int) -> Any:
    if isinstance(value, str):
        return value[:max_chars]
    if isinstance(value, dict):
        return {k: _truncate_value(v, max_chars) for k, v in value.items()}
    if isinstance(value, list):
        return [_truncate_value(v, max_chars) for v in value]
    return value


_JSON_NAMES = {bool: "boolean", str: "string", dict: "object", list: "array", int: "integer", float: "number"}


def _json_type(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "number"
    return "null" if value is None else _JSON_NAMES.get(type(value), type(value).__name__)


def one_line(exc: BaseException, with_type: bool = True) -> str:
    """An exception as one short line for a response body: type and first line of the message."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {first}" if with_type and first else first or type(exc).__name__
    return text[:300]


# ----------------------------------------------------------------------------- app and server


def _fastapi():
    try:
        import fastapi
    except ImportError:
        raise UserError(NEEDS_EXTRA) from None
    return fastapi


def create_app(predictor: Predictor, **limits: Any) -> "FastAPI":
    """The FastAPI app serving `predictor`; `limits` are `Limits` fields. The batching worker runs
    during the app's lifespan (uvicorn starts it; in tests use `with TestClient(app) as client`)."""
    fastapi = _fastapi()
    lim = Limits.from_kwargs(**limits)

    @contextlib.asynccontextmanager
    async def lifespan(app: "FastAPI") -> AsyncIterator[None]:
        app.state.batcher = Batcher(predictor, lim.max_batch, lim.batch_wait_ms / 1000)
        app.state.batcher.start()
        yield
        await app.state.batcher.stop()

    app = fastapi.FastAPI(title=f"llmtune {predictor.task}", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(BadRequest)
    async def bad_request(request, exc: BadRequest):
        return fastapi.responses.JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(Exception)
    async def internal_error(request, exc: Exception):
        # Any other failure (a bug, info() raising): one JSON line; the server logs the traceback.
        return fastapi.responses.JSONResponse({"detail": f"internal error: {one_line(exc)}"}, status_code=500)

    # No return annotations: FastAPI would take them as response models and re-validate outputs.
    @app.get("/health")
    async def health():
        limits_out = dataclasses.asdict(lim) | {"max_input_chars": predictor.max_input_chars}
        return {"status": "ok", "task": predictor.task, "model": predictor.info(), "params": {k: t.__name__ for k, t in predictor.params.items()}, "limits": limits_out}

    @app.post("/predict")
    async def predict(request: fastapi.Request):
        inputs, params = parse_request(await read_body(request, lim.max_body_bytes), predictor, lim)
        inputs, truncated = truncate(inputs, predictor.max_input_chars)
        try:
            outputs = await request.app.state.batcher.submit(inputs, params)
        except UserError as exc:  # the task cannot use this input: the client's to fix
            raise BadRequest(422, one_line(exc, with_type=False)) from None
        except Exception as exc:
            log.exception("predict failed for a request of %d inputs", len(inputs))
            raise BadRequest(500, f"prediction failed: {one_line(exc)}") from None
        return {"outputs": outputs, "truncated": truncated}

    return app


def serve(predictor: Predictor, host: str = "127.0.0.1", port: int = 8000, **limits: Any) -> None:
    """Serve `predictor` over HTTP until interrupted. Loopback only unless `host` says otherwise."""
    app = create_app(predictor, **limits)
    try:
        import uvicorn
    except ImportError:
        raise UserError(NEEDS_EXTRA) from None
    try:
        port = int(port)
    except (TypeError, ValueError):
        port = -1
    if not 0 < port < 65536:
        raise UserError("serve port must be a number from 1 to 65535, e.g. port=8000.")
    if host not in LOOPBACK:
        log.warning("serving on %s: anyone who can reach this machine on port %d can call the model (there is no authentication).", host, port)
    uvicorn.run(app, host=host, port=port, log_level="info")
