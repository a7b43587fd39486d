"""Methods from the peft library: one base class for the wrapping, saving, loading and merging
they share. A method says only how its peft config is made (`peft_config`); the task head
(classifier, score, qa_outputs...) trains in full (peft's modules_to_save) unless it says otherwise.
"""

from __future__ import annotations

from llmtune.errors import UserError
from llmtune.peft.base import PeftMethod
from llmtune.peft.heads import task_head_names


class PeftLibraryMethod(PeftMethod):
    is_adapter = True
    default_lr = 2e-3  # adapters start at (or near) the base model and need a larger rate than full fine-tuning

    def peft_config(self, model, task, heads: list[str]):
        """The peft config for `model` (heads: its task heads, to train in full)."""
        raise NotImplementedError(f"{type(self).__name__}.peft_config")

    def apply(self, model, task):
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config(model, task, task_head_names(model)))

    def save(self, model, directory, state_dict: dict | None = None) -> None:
        model.save_pretrained(directory, state_dict=state_dict)  # adapter + head weights + adapter_config.json

    def load(self, final, auto, info: dict, base=None):
        """A final/ this method saved: the base model, built with final/'s config (it carries
        the label maps), plus the adapter. The base is the local folder the run loaded it from,
        or `base` (a model built from scratch, rebuilt by the caller from its config and seed)."""
        from peft import PeftModel

        return PeftModel.from_pretrained(self.prepare_base(base if base is not None else self.load_base(final, auto, info)), final)

    def load_base(self, final, auto, info: dict):
        """The base model final/'s adapter was trained on, from the folder the run loaded it from."""
        from peft import PeftConfig
        from transformers import AutoConfig

        from llmtune.models import load_grown

        base_path = info.get("base_model_path") or PeftConfig.from_pretrained(final).base_model_name_or_path
        if not base_path:
            raise UserError(f"{final}: the adapter's base model is not recorded (llmtune.json base_model_path); it cannot be loaded.")
        try:
            # final/'s config: the label maps, and a vocabulary the task's tokens may have grown.
            return load_grown(auto, base_path, AutoConfig.from_pretrained(final))
        except OSError as exc:
            raise UserError(f"{final}: cannot load its base model from {base_path} ({str(exc).splitlines()[0]}); the adapter needs it.") from None

    def prepare_base(self, base):
        """The base as training saw it before the adapter was added (QLoRA: quantized). Default: as is."""
        return base

    def merged(self, model):
        """The adapter folded into the base weights: one plain transformers model."""
        return model.merge_and_unload()
