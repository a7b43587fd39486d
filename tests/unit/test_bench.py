"""`llmtune bench` machinery on a tiny model: every runner trains and reports. No timing asserts:
the benchmark reports speed, tests only check that it measured something."""

from __future__ import annotations

import json


def test_bench_runs_every_runner_and_writes_json(cli, tmp_path):
    out = tmp_path / "bench.json"
    result = cli("bench", "--cases", "cls", "--size", "tiny", "--steps", "3", "--warmup", "1", "--examples", "200", "--batch-size", "8", "--out", out)
    assert result.code == 0, result.text

    data = json.loads(out.read_text())
    case = data["cases"]["cls"]
    runs = case["runs"]
    assert {"llmtune", "hf", "hf_group_by_length", "raw"} <= set(runs)
    for name, run in runs.items():
        assert "error" not in run, (name, run)
        assert run["steps"] == 3
        assert run["tokens_per_s"] > 0
        assert 0 <= run["padding_fraction"] < 1
        assert run["tokens_trained"] > 0
    # llmtune's own count of non-pad tokens matches the bench's count of what it trained.
    assert runs["llmtune"]["engine_tokens_seen"] == runs["llmtune"]["tokens_trained"]
    # Every llmtune run, the token-budget variant too, against every baseline.
    assert set(case["ratios"]["tokens_per_s"]) == {f"{mine}/{other}" for mine in ("llmtune", "llmtune+max_tokens") for other in ("hf", "hf_group_by_length", "raw")}
    assert runs["llmtune+max_tokens"]["padding_fraction"] < runs["hf"]["padding_fraction"]
    assert case["data"]["examples"] == 200
    assert "llmtune" in result.out  # the table was printed


def test_bench_sft_case_compares_packed_llmtune_with_padded_baselines(cli, tmp_path):
    out = tmp_path / "bench.json"
    result = cli("bench", "--cases", "sft", "--size", "tiny", "--steps", "3", "--warmup", "1", "--examples", "200", "--batch-size", "8",
                 "--runners", "llmtune,hf,raw", "--out", out)
    assert result.code == 0, result.text
    case = json.loads(out.read_text())["cases"]["sft"]
    runs = case["runs"]
    for name, run in runs.items():
        assert "error" not in run, (name, run)
        assert run["tokens_per_s"] > 0 and run["tokens_trained"] > 0
    # Packed rows carry almost no padding; the padded baselines carry a lot on mixed lengths.
    assert runs["llmtune"]["padding_fraction"] < 0.05 < runs["hf"]["padding_fraction"]
    assert runs["llmtune"]["engine_tokens_seen"] == runs["llmtune"]["tokens_trained"]
    # llmtune's packed rows per step hold about the real tokens of the baselines' 8 samples.
    per_step = lambda run: run["tokens_trained"] / run["steps"]  # noqa: E731
    assert 0.5 < per_step(runs["llmtune"]) / per_step(runs["hf"]) < 2
    assert case["data"]["examples"] == 200  # the baselines train on the samples, one per row
