"""The HTTP layer of `llmtune serve`, in process, against a fake predictor (no model, no network)."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from llmtune import serving
from llmtune.errors import UserError

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402


class Upper:
    """Uppercases text; records every batch it is called with; fails on the input "boom"."""

    task = "fake"
    max_input_chars = 20
    params = {"max_new_tokens": int, "temperature": float}

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[tuple[list, dict]] = []
        self.delay = delay
        self.lock = threading.Lock()

    def predict(self, inputs: list, **params) -> list[dict]:
        with self.lock:
            self.calls.append((list(inputs), params))
        time.sleep(self.delay)  # lets concurrent requests pile up behind a running call
        if "boom" in inputs:
            raise ValueError("boom input\nsecond line of detail")
        if "unusable" in inputs:
            raise UserError("input has no 'text' field; send {\"text\": ...}")
        return [{"text": (x if isinstance(x, str) else x["text"]).upper(), **params} for x in inputs]

    def info(self) -> dict:
        return {"model": "fake-upper", "labels": ["A", "B"]}


@pytest.fixture
def fake():
    return Upper()


def client_for(predictor, **limits):
    return TestClient(serving.create_app(predictor, **limits))


def test_health_describes_task_model_and_limits(fake):
    with client_for(fake, max_inputs=5) as client:
        r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["task"] == "fake"
    assert body["model"] == {"model": "fake-upper", "labels": ["A", "B"]}
    assert body["limits"]["max_inputs"] == 5 and body["limits"]["max_input_chars"] == 20
    assert body["params"] == {"max_new_tokens": "int", "temperature": "float"}


def test_predict_round_trip_keeps_order(fake):
    with client_for(fake) as client:
        r = client.post("/predict", json={"inputs": ["b", {"text": "a"}, "c"]})
    assert r.status_code == 200
    assert r.json() == {"outputs": [{"text": "B"}, {"text": "A"}, {"text": "C"}], "truncated": []}


def test_params_are_passed_to_predict(fake):
    with client_for(fake) as client:
        r = client.post("/predict", json={"inputs": ["x"], "params": {"max_new_tokens": 3, "temperature": 1}})
    assert r.status_code == 200
    assert fake.calls == [(["x"], {"max_new_tokens": 3, "temperature": 1})]


def test_concurrent_requests_are_batched_and_each_gets_its_own_outputs():
    fake = Upper(delay=0.05)
    texts = [[f"r{i}a", f"r{i}b"] for i in range(20)]
    with client_for(fake, batch_wait_ms=20) as client, ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda t: client.post("/predict", json={"inputs": t}), texts))
    for sent, r in zip(texts, responses, strict=True):
        assert r.status_code == 200
        assert [o["text"] for o in r.json()["outputs"]] == [t.upper() for t in sent]
    assert len(fake.calls) < len(texts)  # merged
    assert sum(len(inputs) for inputs, _ in fake.calls) == 40  # every input predicted exactly once


def test_max_batch_caps_a_merged_call():
    fake = Upper(delay=0.05)
    with client_for(fake, batch_wait_ms=20, max_batch=4) as client, ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda i: client.post("/predict", json={"inputs": [f"{i}a", f"{i}b"]}), range(12)))
    assert all(r.status_code == 200 for r in responses)
    assert max(len(inputs) for inputs, _ in fake.calls) <= 4


def test_batcher_splits_params_and_isolates_a_failing_request():
    # Driven directly, so all requests are certainly queued before the worker collects them.
    fake = Upper()

    async def run():
        batcher = serving.Batcher(fake, max_batch=64, wait_s=0.05)
        batcher.start()
        jobs = [batcher.submit(["a"], {}), batcher.submit(["boom"], {}), batcher.submit(["c"], {}),
                batcher.submit(["d"], {"max_new_tokens": 2})]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        await batcher.stop()
        return results

    a, boom, c, d = asyncio.run(run())
    assert a == [{"text": "A"}] and c == [{"text": "C"}]
    assert isinstance(boom, ValueError)
    assert d == [{"text": "D", "max_new_tokens": 2}]
    assert fake.calls[0] == (["a", "boom", "c"], {})  # merged first, then retried one by one
    assert (["d"], {"max_new_tokens": 2}) in fake.calls


def test_oversized_body_is_413(fake):
    with client_for(fake, max_body_bytes=1000) as client:
        r = client.post("/predict", json={"inputs": ["x" * 2000]})
    assert r.status_code == 413
    assert "max_body_bytes" in r.json()["detail"]
    assert fake.calls == []


def test_too_many_inputs_is_refused(fake):
    with client_for(fake, max_inputs=3) as client:
        r = client.post("/predict", json={"inputs": ["a", "b", "c", "d"]})
    assert r.status_code == 413
    assert "max_inputs" in r.json()["detail"] and "Split" in r.json()["detail"]
    assert fake.calls == []


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'["a"]', 422, "send an object"),
        (b'{"input": ["a"]}', 422, "Did you mean 'inputs'?"),
        (b'{"params": {}}', 422, "missing field 'inputs'"),
        (b'{"inputs": "a"}', 422, "must be a list"),
        (b'{"inputs": []}', 422, "is empty"),
        (b'{"inputs": [1]}', 422, "inputs[0] is a JSON number"),
        (b'{"inputs": ["a"], "params": {"max_tokens": 3}}', 422, "Did you mean 'max_new_tokens'?"),
        (b'{"inputs": ["a"], "params": {"max_new_tokens": 1.5}}', 422, "must be a JSON integer"),
        (b'{"inputs": ["a"], "params": []}', 422, "must be an object"),
    ],
)
def test_bad_requests_get_4xx_with_one_line(fake, body, status, needle):
    with client_for(fake) as client:
        r = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    detail = r.json()["detail"]
    assert needle in detail and "\n" not in detail
    assert fake.calls == []


def test_long_input_is_truncated_and_stated(fake):
    long = "x" * 50
    with client_for(fake) as client:
        r = client.post("/predict", json={"inputs": ["short", long, {"text": long}]})
    assert r.status_code == 200
    assert r.json()["truncated"] == [1, 2]
    assert fake.calls[0][0] == ["short", "x" * 20, {"text": "x" * 20}]


def test_predict_exception_is_500_one_line_and_logged(fake, caplog):
    with client_for(fake) as client:
        r = client.post("/predict", json={"inputs": ["boom"]})
    assert r.status_code == 500
    detail = r.json()["detail"]
    assert detail == "prediction failed: ValueError: boom input"
    assert "Traceback" not in r.text
    assert "Traceback" in caplog.text and "second line of detail" in caplog.text


def test_user_error_from_predict_is_422(fake):
    with client_for(fake) as client:
        r = client.post("/predict", json={"inputs": ["unusable"]})
    assert r.status_code == 422
    assert r.json()["detail"].startswith("input has no 'text' field")


def test_bad_limit_is_a_user_error(fake):
    with pytest.raises(UserError, match="Did you mean 'max_inputs'"):
        serving.create_app(fake, max_input=3)
    with pytest.raises(UserError, match="positive"):
        serving.create_app(fake, max_batch=0)
    assert serving.Limits.from_kwargs(max_inputs="8", batch_wait_ms="2.5") == serving.Limits(max_inputs=8, batch_wait_ms=2.5)


def test_serve_binds_loopback_by_default(fake, monkeypatch, caplog):
    uvicorn = pytest.importorskip("uvicorn")
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw))
    serving.serve(fake)
    assert seen["host"] == "127.0.0.1" and seen["port"] == 8000
    assert "no authentication" not in caplog.text
    serving.serve(fake, host="0.0.0.0", port="9000")
    assert seen["host"] == "0.0.0.0" and seen["port"] == 9000
    assert "no authentication" in caplog.text
    with pytest.raises(UserError, match="port"):
        serving.serve(fake, port=70000)


def test_missing_extra_is_one_line(fake, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # makes `import fastapi` fail
    with pytest.raises(UserError, match=r"pip install 'llmtune\[serve\]'"):
        serving.create_app(fake)
