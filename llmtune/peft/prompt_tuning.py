"""Prompt tuning (Lester et al., 2021) through the peft library: `num_virtual_tokens` trained
embeddings in front of every input; the task head trains too. Shared behaviour (alignment of
the logits, refusals, save/load): llmtune.peft.prompt_learning."""

from __future__ import annotations

from llmtune.errors import UserError
from llmtune.peft.prompt_learning import PromptLearning


class PromptTuning(PromptLearning):
    method = "prompt_tuning"
    default_lr = 3e-2  # only the prompt (and the head) move; peft's examples use 3e-2

    def __init__(self, num_virtual_tokens: int = 20, init_text: str | None = None, tokenizer: str | None = None, model_name_or_path: str | None = None) -> None:
        super().__init__(num_virtual_tokens)
        self.init_text = init_text or None
        # The run's tokenizer by name, as llmtune.tokenization.load_tokenizer picks it: it tokenizes init_text.
        self.tokenizer = tokenizer or model_name_or_path

    def preflight(self, cfg) -> None:
        super().preflight(cfg)
        if self.init_text and not self.tokenizer:
            raise UserError(
                f"peft.init_text={self.init_text!r} is tokenized with the run's tokenizer, but this run trains its tokenizer on the data "
                "(a model built from scratch); name one with model.tokenizer=<folder or hub id>, or set peft.init_text=null."
            )

    def peft_config(self, model, task, heads: list[str]):
        from peft import PromptTuningConfig

        # Always RANDOM for peft: a text init is done here (init_from_text), so that loading
        # final/ never needs the tokenizer again; the saved weights hold the init.
        return PromptTuningConfig(task_type=task.peft_task_type, num_virtual_tokens=self.num_virtual_tokens, modules_to_save=heads or None)

    def apply(self, model, task):
        model = super().apply(model, task)
        if self.init_text:
            self.init_from_text(model)
        return model

    def init_from_text(self, model) -> None:
        """The virtual tokens start as the input embeddings of init_text's tokens, repeated or
        cut to num_virtual_tokens (as peft's TEXT init does)."""
        import torch
        from transformers import AutoTokenizer

        from llmtune.models import resolve

        ids = AutoTokenizer.from_pretrained(resolve(self.tokenizer))(self.init_text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise UserError(f"peft.init_text={self.init_text!r} has no tokens for this tokenizer; give a few words describing the task, or null for a random init.")
        ids = (ids * -(-self.num_virtual_tokens // len(ids)))[: self.num_virtual_tokens]
        with torch.no_grad():
            words = model.get_input_embeddings()(torch.tensor(ids, device=model.device))
            model.prompt_encoder["default"].embedding.weight.copy_(words)
