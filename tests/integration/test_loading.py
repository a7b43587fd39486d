"""final/ outside llmtune, LoRA target modules from the command line, and what a run imports.

The README's loading snippet is run exactly as printed (only its "runs/.../final" placeholder
is replaced), from another directory, offline, against tiny runs: a full fine-tune, and a LoRA
run whose base is that full fine-tune's final/ given by a relative path.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

from conftest import FIXED_TOKENIZER, ROOT, ner_args, run_cli, subprocess_env

FAST = ["trainer.max_steps=2", f"model.tokenizer={FIXED_TOKENIZER}", "trainer.eval_every=null", "trainer.save_every=null"]


def _readme_snippets() -> tuple[str, str]:
    """The README's `Load final/` code block, split at its blank line: (full/BitFit, LoRA)."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"Load `final/` with plain transformers or peft:\n\n```python\n(.*?)```", readme, re.S)
    assert block, "the README lost its loading snippet"
    full, lora = block.group(1).strip().split("\n\n")
    assert '"runs/.../final"' in full and '"runs/.../final"' in lora
    return full, lora


def _run_snippet(code: str, final) -> dict:
    namespace: dict = {}
    exec(code.replace('"runs/.../final"', repr(str(final))), namespace)  # noqa: S102 -- the README's own code
    return namespace


def _labels(final) -> list[str]:
    return json.loads((final / "llmtune.json").read_text())["labels"]


def test_readme_snippet_loads_full_and_lora_with_label_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    full = run_cli(*ner_args(tmp_path / "full"), *FAST)
    assert full.code == 0, full.text
    # LoRA on the full run's final/, named by a path relative to the working directory.
    lora = run_cli(*ner_args(tmp_path / "lora"), *FAST, "model.name_or_path=full/final", "peft=lora")
    assert lora.code == 0, lora.text
    full_final, lora_final = tmp_path / "full" / "final", tmp_path / "lora" / "final"

    info = json.loads((lora_final / "llmtune.json").read_text())
    assert info["base_model"] == "full/final"  # as given
    assert info["base_model_path"] == str(full_final)  # absolute: loads from anywhere
    assert json.loads((lora_final / "adapter_config.json").read_text())["base_model_name_or_path"] == str(full_final)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    full_code, lora_code = _readme_snippets()

    model = _run_snippet(full_code, full_final)["model"]
    labels = _labels(full_final)
    assert len(labels) > 2 and [model.config.id2label[i] for i in range(len(labels))] == labels

    model = _run_snippet(lora_code, lora_final)["model"]
    labels = _labels(lora_final)
    assert [model.config.id2label[i] for i in range(len(labels))] == labels  # not LABEL_0..
    from peft import PeftModel
    from safetensors.torch import load_file

    assert isinstance(model, PeftModel)
    saved = load_file(lora_final / "adapter_model.safetensors")
    head = next(v for k, v in saved.items() if k.endswith("classifier.weight"))
    assert torch.equal(model.base_model.model.classifier.modules_to_save["default"].weight, head)
    lora_b = {k: v for k, v in saved.items() if "lora_B" in k}
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b.values())  # trained adapters were saved ...
    loaded = dict(model.named_parameters())
    for key, value in lora_b.items():  # ... and are what the snippet loaded
        name = next(n for n in loaded if n.startswith(key.removesuffix(".weight")) and n.endswith(".weight"))
        assert torch.equal(loaded[name], value), key


@pytest.mark.parametrize("spec", ["[query,value]", r"'.*\.(query|value)'"])
def test_target_modules_from_the_command_line(tmp_path, spec):
    result = run_cli(*ner_args(tmp_path / "run"), *FAST, "peft=lora", f"peft.target_modules={spec}")
    assert result.code == 0, result.text
    config = json.loads((tmp_path / "run" / "final" / "adapter_config.json").read_text())
    targets = config["target_modules"]
    assert (set(targets) if isinstance(targets, list) else targets) in ({"query", "value"}, r".*\.(query|value)")
    from safetensors.torch import load_file

    wrapped = {k.split(".lora_A")[0].rsplit(".", 1)[-1] for k in load_file(tmp_path / "run" / "final" / "adapter_model.safetensors") if ".lora_A" in k}
    assert wrapped == {"query", "value"}


def test_bad_target_modules_from_the_command_line(tmp_path):
    result = run_cli(*ner_args(tmp_path / "run"), *FAST, "peft=lora", "peft.target_modules=[qkv_proj]")
    assert result.code == 2, result.text
    errors = [line for line in result.err.splitlines() if "llmtune: error" in line]
    assert len(errors) == 1 and "qkv_proj matches no linear layer" in errors[0] and "query" in errors[0]
    assert "Traceback" not in result.err


_IMPORTS = """
import sys
from llmtune.cli import main
main(sys.argv[1:])
print("imported:", "bitsandbytes" in sys.modules, "peft" in sys.modules)
"""


def test_a_run_without_bitsandbytes_in_its_config_does_not_import_it(tmp_path):
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed, so nothing could import it")
    args = [*ner_args(tmp_path / "run"), *FAST, "peft=lora", "optimizer=adamw"]
    proc = subprocess.run([sys.executable, "-c", _IMPORTS, *args], cwd=ROOT, env=subprocess_env(tmp_path / "cache"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # peft was imported (it imports bitsandbytes whenever it can), bitsandbytes was not.
    assert proc.stdout.strip().splitlines()[-1] == "imported: False True"
    assert "gemm_4bit_forward" not in proc.stderr
