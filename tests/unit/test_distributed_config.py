"""The `distributed` group: every option composes and validates, the accelerate plugin kwargs
built from each are right, wrong input is one clear line, and SLURM sweeps compose."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from omegaconf import OmegaConf

from llmtune import config as llmtune_config
from llmtune.engine import checkpoint, distributed
from llmtune.errors import UserError
from llmtune.paths import conf_dir, group_options

OPTIONS = ["none", "ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"]


def _compose(primary: str = "finetune", *overrides: str):
    from hydra import compose, initialize_config_dir

    llmtune_config.register_resolvers()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        return compose(config_name=primary, overrides=list(overrides))


def _one_line_error(result) -> str:
    assert result.code == 2, result
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    assert lines[0].startswith("llmtune: error: ") and "Traceback" not in result.err
    return lines[0]


# ------------------------------------------------------------------ the group composes
def test_the_group_has_the_documented_options():
    assert sorted(group_options("distributed")) == sorted(OPTIONS)


@pytest.mark.parametrize("primary", ["finetune", "pretrain"])
def test_default_is_none(primary):
    cfg = _compose(primary)
    assert cfg.distributed.strategy == "none"
    assert distributed.plugin_kwargs(cfg) == {}


@pytest.mark.parametrize("primary", ["finetune", "pretrain"])
@pytest.mark.parametrize("option", OPTIONS)
def test_every_option_composes_and_validates(primary, option):
    cfg = _compose(primary, f"distributed={option}")
    llmtune_config.validate(cfg)  # DeepSpeed too: the package and the GPU are checked at launch
    OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("option", OPTIONS)
def test_preflight_accepts_each_option(option, tmp_path):
    llmtune_config.preflight(str(conf_dir()), "finetune", [f"distributed={option}", f"output_dir={tmp_path / 'run'}"])


def test_cfg_job_shows_the_group(cli, tmp_path):
    result = cli("finetune", "--cfg", "job", "distributed=fsdp", "distributed.wrap_classes=[BertLayer]", f"output_dir={tmp_path}")
    assert result.code == 0, result.err
    cfg = OmegaConf.create(result.out)
    assert cfg.distributed.strategy == "fsdp" and list(cfg.distributed.wrap_classes) == ["BertLayer"]


def test_misspelt_option_lists_the_options(cli, tmp_path):
    line = _one_line_error(cli("finetune", "distributed=fdsp", f"output_dir={tmp_path / 'x'}"))
    assert "'fdsp' is not an option of config group 'distributed'" in line
    assert "Did you mean 'fsdp'?" in line
    for option in OPTIONS:
        assert option in line
    assert not (tmp_path / "x").exists()


def test_misspelt_key_suggests_the_closest(cli, tmp_path):
    line = _one_line_error(cli("finetune", "distributed=fsdp", "distributed.cpu_ofload=true", f"output_dir={tmp_path / 'x'}"))
    assert "distributed.cpu_offload" in line


@pytest.mark.parametrize("override", ["distributed.wrap_classes=BertLayer", "distributed.cpu_offload=maybe"])
def test_wrong_types(cli, tmp_path, override):
    _one_line_error(cli("finetune", "distributed=fsdp", override, f"output_dir={tmp_path / 'x'}"))


# ------------------------------------------------------------------ config rules
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["distributed=deepspeed_zero2", "trainer.grad_accum=2"], "trainer.grad_accum=1"),
        (["distributed=deepspeed_zero2", "distributed.offload_params=cpu"], "needs ZeRO stage 3"),
        (["distributed=deepspeed_zero3", "distributed.offload_optimizer=nvme"], "distributed.nvme_path"),
        (["distributed=deepspeed_zero3", "distributed.offload_optimizer=disk"], "none, cpu, nvme"),
        (["distributed=deepspeed_zero2", "distributed.zero_stage=1"], "stages 2 and 3"),
        (["distributed=fsdp", "distributed.activation_checkpointing=true", "trainer.gradient_checkpointing=true"], "turn one off"),
    ],
)
def test_rules(overrides, expected):
    cfg = _compose("finetune", *overrides)
    with pytest.raises(UserError, match=expected.replace(".", r"\.")):
        llmtune_config.validate(cfg)


def test_nvme_with_a_path_validates(tmp_path):
    cfg = _compose("finetune", "distributed=deepspeed_zero3", "distributed.offload_params=nvme", f"distributed.nvme_path={tmp_path}")
    llmtune_config.validate(cfg)


# ------------------------------------------------------------------ plugin kwargs
def test_ddp_kwargs():
    cfg = _compose("finetune", "distributed=ddp", "distributed.find_unused_parameters=true")
    assert distributed.plugin_kwargs(cfg) == {
        "find_unused_parameters": True, "bucket_cap_mb": 25, "gradient_as_bucket_view": False, "static_graph": False,
    }


def test_fsdp_kwargs():
    cfg = _compose("finetune", "distributed=fsdp")
    assert distributed.plugin_kwargs(cfg) == {
        "fsdp_version": 2,
        "reshard_after_forward": True,
        "auto_wrap_policy": "transformer_based_wrap",
        "transformer_cls_names_to_wrap": None,
        "state_dict_type": "SHARDED_STATE_DICT",
        "cpu_offload": False,
        "activation_checkpointing": False,
    }
    cfg = _compose("finetune", "distributed=fsdp", "distributed.wrap_classes=[LlamaDecoderLayer]", "distributed.cpu_offload=true",
                   "distributed.reshard_after_forward=false", "distributed.activation_checkpointing=true")
    kwargs = distributed.plugin_kwargs(cfg)
    assert kwargs["transformer_cls_names_to_wrap"] == ["LlamaDecoderLayer"]
    assert kwargs["cpu_offload"] is True and kwargs["reshard_after_forward"] is False and kwargs["activation_checkpointing"] is True


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_kwargs(stage, tmp_path):
    cfg = _compose("finetune", f"distributed=deepspeed_zero{stage}", "trainer.max_grad_norm=0.5")
    assert distributed.plugin_kwargs(cfg) == {
        "zero_stage": stage,
        "offload_optimizer_device": "none",
        "offload_param_device": "none",
        "offload_optimizer_nvme_path": None,
        "offload_param_nvme_path": None,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 0.5,
        "zero3_save_16bit_model": stage == 3,
        "zero3_init_flag": False,
    }
    if stage == 3:
        cfg = _compose("finetune", "distributed=deepspeed_zero3", "distributed.offload_optimizer=cpu", "distributed.offload_params=nvme",
                       f"distributed.nvme_path={tmp_path}", "trainer.max_grad_norm=null")
        kwargs = distributed.plugin_kwargs(cfg)
        assert (kwargs["offload_optimizer_device"], kwargs["offload_param_device"]) == ("cpu", "nvme")
        assert (kwargs["offload_optimizer_nvme_path"], kwargs["offload_param_nvme_path"]) == (None, str(tmp_path))
        assert kwargs["gradient_clipping"] == 0.0


def test_plugin_objects_build(monkeypatch):
    """The kwargs are accepted by accelerate's classes (built without starting anything)."""
    from accelerate.utils import DistributedDataParallelKwargs, FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import StateDictType

    monkeypatch.setenv("WORLD_SIZE", "2")
    ddp = distributed.accelerator_kwargs(_compose("finetune", "distributed=ddp", "distributed.bucket_cap_mb=50"), cpu=True)
    (handler,) = ddp["kwargs_handlers"]
    assert isinstance(handler, DistributedDataParallelKwargs) and handler.bucket_cap_mb == 50
    plugin = distributed.accelerator_kwargs(_compose("finetune", "distributed=fsdp"), cpu=True)["fsdp_plugin"]
    assert isinstance(plugin, FullyShardedDataParallelPlugin)
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.state_dict_type == StateDictType.SHARDED_STATE_DICT
    assert distributed.accelerator_kwargs(_compose("finetune"), cpu=True) == {}


def test_fsdp_cpu_offload_needs_a_gpu(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="distributed.cpu_offload=false"):
        distributed.accelerator_kwargs(_compose("finetune", "distributed=fsdp", "distributed.cpu_offload=true"), cpu=True)
    plugin = distributed.accelerator_kwargs(_compose("finetune", "distributed=fsdp", "distributed.cpu_offload=true"), cpu=False)["fsdp_plugin"]
    assert plugin.cpu_offload  # accelerate turned the flag into torch's offload policy


def test_fsdp_with_one_process_trains_plainly(monkeypatch, caplog):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.accelerator_kwargs(_compose("finetune", "distributed=fsdp"), cpu=True) == {}
    assert "nothing to shard" in caplog.text


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed here")
@pytest.mark.parametrize("option", ["deepspeed_zero2", "deepspeed_zero3"])
def test_deepspeed_missing_is_one_line(option):
    with pytest.raises(UserError, match=r"pip install 'llmtune\[deepspeed\]'"):
        distributed.accelerator_kwargs(_compose("finetune", f"distributed={option}"), cpu=False)


def test_deepspeed_on_cpu_is_refused(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "deepspeed" else real(name, *a))
    with pytest.raises(UserError, match="needs CUDA GPUs"):
        distributed.accelerator_kwargs(_compose("finetune", "distributed=deepspeed_zero3"), cpu=True)


def test_deepspeed_run_stops_before_the_model_loads(cli, tiny_ner_args):
    line = _one_line_error(cli(*tiny_ner_args, "distributed=deepspeed_zero2"))
    assert "distributed=deepspeed_zero2" in line
    assert "deepspeed" in line and ("pip install" in line or "CUDA" in line)


# ------------------------------------------------------------------ what FSDP wraps
def _tiny(kind: str):
    from transformers import BertConfig, BertForTokenClassification, LlamaConfig, LlamaForCausalLM

    if kind == "bert":
        return BertForTokenClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, num_labels=3))
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, intermediate_size=32))


def test_wrap_classes_default_to_the_transformer_block():
    # BERT's blocks; BertEmbeddings (it holds the input embeddings, which accelerate shards on
    # their own) is left out even where a model lists it in _no_split_modules.
    bert = _tiny("bert")
    assert distributed.resolve_wrap_classes(bert, None) == ["BertLayer"]
    bert._no_split_modules = ["BertEmbeddings", "BertLayer"]
    assert distributed.resolve_wrap_classes(bert, None) == ["BertLayer"]
    assert distributed.resolve_wrap_classes(_tiny("llama"), None) == ["LlamaDecoderLayer"]


def test_wrong_wrap_class_is_one_line():
    bert = _tiny("bert")
    with pytest.raises(UserError, match="no module class 'BertLayr'. Did you mean 'BertLayer'"):
        distributed.resolve_wrap_classes(bert, ["BertLayr"])
    with pytest.raises(UserError, match="holds the input embeddings"):
        distributed.resolve_wrap_classes(bert, ["BertEmbeddings"])
    assert distributed.resolve_wrap_classes(bert, ["BertLayer", "BertSelfAttention"]) == ["BertLayer", "BertSelfAttention"]


def test_ties_split_across_units_are_refused():
    from transformers import BertConfig, BertForMaskedLM

    # The tied input/output embeddings are grouped by accelerate: fine.
    llama = _tiny("llama")
    llama.lm_head.weight = llama.model.embed_tokens.weight
    assert distributed.shared_names(llama) == [["model.embed_tokens.weight", "lm_head.weight"]]
    distributed.check_shared_parameters(llama, ["LlamaDecoderLayer"])
    # BERT's masked-LM head registers one bias under two modules that land in different units.
    mlm = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32))
    with pytest.raises(UserError, match="cls.predictions.bias and cls.predictions.decoder.bias.*distributed=ddp"):
        distributed.check_shared_parameters(mlm, ["BertLayer"])


def test_plugin_resolves_the_classes_from_the_model(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    plugin = distributed.accelerator_kwargs(_compose("finetune", "distributed=fsdp"), cpu=True)["fsdp_plugin"]
    plugin.set_auto_wrap_policy(_tiny("llama"))
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    wrong = distributed.accelerator_kwargs(_compose("finetune", "distributed=fsdp", "distributed.wrap_classes=[Block]"), cpu=True)["fsdp_plugin"]
    with pytest.raises(UserError, match="distributed.wrap_classes"):
        wrong.set_auto_wrap_policy(_tiny("llama"))


def test_a_plain_model_needs_no_gathering():
    class Acc:
        distributed_type = "NO"

    assert distributed.full_weights(torch.nn.Linear(2, 2), Acc()) is None


# ------------------------------------------------------------------ checkpoint layouts
def test_layout_is_read_from_the_file_list():
    assert checkpoint._layout({"trainable.safetensors": 1, "optimizer.pt": 1}) == "plain"
    assert checkpoint._layout({"sharded/.metadata": 1, "sharded/__0_0.distcp": 1}) == "sharded"
    assert checkpoint._layout({"deepspeed/pytorch_model/mp_rank_00_model_states.pt": 1}) == "deepspeed"


def test_a_sharded_checkpoint_is_not_loaded_into_a_plain_run(tmp_path):
    from types import SimpleNamespace

    path = tmp_path / "step-2"
    (path / "sharded").mkdir(parents=True)
    (path / "sharded" / ".metadata").write_bytes(b"x")
    (path / "state.json").write_text(json.dumps({"step": 2, "files": {"sharded/.metadata": 1}}))
    acc = SimpleNamespace(unwrap_model=lambda m: m, process_index=0)
    with pytest.raises(UserError, match="written with distributed=fsdp and this run uses neither FSDP nor DeepSpeed"):
        checkpoint.load_weights(path, torch.nn.Linear(2, 2), acc)


# ------------------------------------------------------------------ SLURM sweeps (submitit)
needs_submitit = pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
    reason="hydra-submitit-launcher is not installed (pip install 'llmtune[slurm]')",
)


@needs_submitit
def test_slurm_launcher_settings_come_through(cli, tmp_path):
    result = cli("finetune", "--cfg", "hydra", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                 "hydra.launcher.timeout_min=240", "hydra.launcher.gpus_per_node=8", "distributed=fsdp", f"output_dir={tmp_path}")
    assert result.code == 0, result.err
    launcher = OmegaConf.create(result.out).hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.timeout_min, launcher.gpus_per_node) == ("gpu", 240, 8)


@needs_submitit
def test_slurm_sweep_passes_the_checks(tmp_path):
    """The README's sweep command: every combination composes and validates with the launcher."""
    llmtune_config.preflight(str(conf_dir()), "finetune", [
        "-m", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu", "optimizer.lr=1e-4,3e-4", f"output_dir={tmp_path}",
    ])
