"""Loading a named model's tokenizer, LoRA target modules, and what `llmtune --help` lists.

- A model folder without tokenizer files is refused (transformers 5 would build an empty
  tokenizer that maps every word to [UNK] and the run would "succeed" on nothing).
- A tokenizer that maps much of the training text to its unknown token is warned about.
- `peft.target_modules` follows peft: a list matches module names by suffix, a string is a
  regex over full names; a wrong name is one line that lists the model's linear layers.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from conftest import ASSETS, FIXED_TOKENIZER, ROOT, corpus_lines
from llmtune.errors import UserError
from llmtune.peft.heads import linear_module_paths
from llmtune.peft.lora import LoRA
from llmtune.tasks.ner import NERTask
from llmtune.tokenization import UNK_WARN_RATE, check_tokenizer_folder, load_tokenizer, unknown_token_rate

# The same sentences in a script the tiny English WordPiece has never seen.
GREEK = [
    "Η αγορά ανοίγει νωρίς το πρωί πριν βγει ο ήλιος.",
    "Οι αγρότες φέρνουν καλάθια με μήλα και αχλάδια.",
    "Ο φούρναρης βγάζει ψωμιά που είναι ακόμα ζεστά.",
]


def _model_cfg(**over):
    base = {"name_or_path": None, "config": None, "tokenizer": None, "tokenizer_vocab_size": 400, "trust_remote_code": False}
    return OmegaConf.create({**base, **over})


def _bert_folder(path, with_tokenizer: bool):
    """A model folder as `save_pretrained` writes it; optionally with the tiny tokenizer."""
    from transformers import AutoTokenizer, BertConfig

    path.mkdir(parents=True, exist_ok=True)
    BertConfig(vocab_size=400, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(path)
    if with_tokenizer:
        AutoTokenizer.from_pretrained(FIXED_TOKENIZER).save_pretrained(path)
    return path


@pytest.fixture
def llmtune_log(caplog):
    """caplog for the llmtune logger (which does not propagate once a run set up logging)."""
    logger = logging.getLogger("llmtune")
    level, propagate = logger.level, logger.propagate
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # each record once
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(level)
    logger.propagate = propagate


# ------------------------------------------------------------------ tokenizer files
def test_folder_without_tokenizer_files_is_refused(tmp_path):
    folder = _bert_folder(tmp_path / "m", with_tokenizer=False)
    with pytest.raises(UserError, match="no tokenizer files") as err:
        load_tokenizer(_model_cfg(name_or_path=str(folder)), NERTask(), iter([]))
    assert str(folder) in str(err.value) and "model.tokenizer=" in str(err.value)
    # The same folder, with the tokenizer named separately, is fine.
    tok = load_tokenizer(_model_cfg(name_or_path=str(folder), tokenizer=str(FIXED_TOKENIZER)), NERTask(), iter(corpus_lines()))
    assert len(tok) == 400
    check_tokenizer_folder("model.name_or_path", str(_bert_folder(tmp_path / "ok", with_tokenizer=True)))  # no error


def test_tokenizer_without_vocabulary_is_refused(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    empty = Tokenizer(models.WordPiece({t: i for i, t in enumerate(specials)}, unk_token="[UNK]"))
    named = {"unk_token": "[UNK]", "pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"}
    PreTrainedTokenizerFast(tokenizer_object=empty, **named).save_pretrained(tmp_path / "t")
    with pytest.raises(UserError, match="no vocabulary"):
        load_tokenizer(_model_cfg(tokenizer=str(tmp_path / "t")), NERTask(), iter(corpus_lines()))


def test_cli_refuses_the_folder_before_the_run_starts(cli, tmp_path):
    folder = _bert_folder(tmp_path / "m", with_tokenizer=False)
    out = tmp_path / "run"
    result = cli("finetune", "task=ner", f"model.name_or_path={folder}", f"data.train_file={ASSETS / 'ner_train.conll'}",
                 "trainer.max_steps=1", "trainer.max_epochs=null", f"output_dir={out}")
    assert result.code == 2, result.text
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "no tokenizer files" in lines[0] and str(folder) in lines[0]
    assert not out.exists()


# ------------------------------------------------------------------ unknown-token rate
def test_unknown_token_rate_warns_on_another_script(llmtune_log):
    task = NERTask()
    load_tokenizer(_model_cfg(tokenizer=str(FIXED_TOKENIZER)), task, iter(corpus_lines()))
    assert "unknown token" not in llmtune_log.text  # the text it was trained on

    load_tokenizer(_model_cfg(tokenizer=str(FIXED_TOKENIZER)), task, iter(GREEK))
    warnings = [r.getMessage() for r in llmtune_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "of the tokens of the first 3 training texts are the unknown token [UNK]" in warnings[0]


def test_unknown_token_rate_values():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(FIXED_TOKENIZER)
    assert unknown_token_rate(tok, corpus_lines()) < UNK_WARN_RATE
    assert unknown_token_rate(tok, GREEK) > 0.8  # every word; only the full stops are known
    mixed = unknown_token_rate(tok, corpus_lines()[:3] + GREEK[:1])
    assert 0 < mixed < 0.8
    assert unknown_token_rate(tok, []) is None


# ------------------------------------------------------------------ LoRA target modules
def _token_cls():
    import torch
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=3)
    return BertForTokenClassification(config)


def _wrapped(model) -> set[str]:
    """Names of the modules LoRA wrapped (those that got a lora_A)."""
    return {name.removeprefix("base_model.model.").removesuffix(".lora_A") for name, _ in model.named_modules() if name.endswith(".lora_A")}


def _paths_ending(model, *leaves) -> set[str]:
    return {p for p in linear_module_paths(model, exclude=["classifier"]) if p.rsplit(".", 1)[-1] in leaves}


@pytest.mark.parametrize("spec", [["query", "value"], r".*\.(query|value)", ["attention.self.query", "value"]])
def test_target_modules_list_or_regex(spec):
    expected = _paths_ending(_token_cls(), "query", "value")
    assert len(expected) == 4  # 2 layers × (query, value)
    model = LoRA(r=2, target_modules=spec).apply(_token_cls(), NERTask())
    assert _wrapped(model) == expected
    assert model.peft_config["default"].target_modules == (spec if isinstance(spec, str) else set(spec))  # as given


def test_target_modules_regex_is_a_full_match():
    model = LoRA(r=2, target_modules=r"bert\.encoder\.layer\.0\..*(query|key)").apply(_token_cls(), NERTask())
    assert _wrapped(model) == {"bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.0.attention.self.key"}


def test_target_modules_auto_still_takes_every_linear_layer():
    model = LoRA(r=2).apply(_token_cls(), NERTask())
    assert _wrapped(model) == set(linear_module_paths(_token_cls(), exclude=["classifier"]))


@pytest.mark.parametrize(("spec", "message"), [
    (["qkv_proj"], "qkv_proj matches no linear layer"),
    (["query", "LayerNorm"], "LayerNorm matches no linear layer"),
    ("query", "matches no module: a string is a regular expression over full module names"),
    (r".*attention.*", "which is not a linear layer"),
    ("(query", "not a valid regular expression"),
    ([], "names no module"),
])
def test_bad_target_modules_are_one_line(spec, message):
    with pytest.raises(UserError, match=message) as err:
        LoRA(target_modules=spec).apply(_token_cls(), NERTask())
    text = str(err.value)
    assert "\n" not in text
    assert "dense, key, query, value" in text or "valid regular expression" in text  # names the real layers


def test_target_modules_list_passes_the_config_checks(tmp_path):
    from llmtune.config import preflight
    from llmtune.paths import conf_dir

    for value in ("[query,value]", r"'.*\.(query|value)'", "auto"):
        preflight(str(conf_dir()), "finetune", ["peft=lora", f"peft.target_modules={value}", f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(UserError, match="expected a string"):
        preflight(str(conf_dir()), "finetune", ["model.name_or_path=[a,b]", f"output_dir={tmp_path / 'run'}"])


# ------------------------------------------------------------------ --help
def test_help_lists_every_task_and_peft_option(cli):
    from llmtune.paths import group_options

    out = cli("--help").out
    line = next(x for x in out.splitlines() if x.strip().startswith("finetune"))
    assert f"task={'|'.join(group_options('task'))}" in line
    assert f"peft={'|'.join(group_options('peft'))}" in line
    assert {"classification", "ner", "sft"} <= set(group_options("task"))


def test_help_imports_no_torch():
    script = "import sys; from llmtune.cli import main; main(['--help']); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"
