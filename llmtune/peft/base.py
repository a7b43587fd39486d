"""The PEFT method contract: every member the builders, the engine and the verbs may use, with
its default. A method is one class deriving from `PeftMethod` (llmtune/peft/<name>.py) that the
`peft` config group instantiates (conf/peft/<name>.yaml); override only what differs.
Methods built on the peft library derive from `llmtune.peft.library.PeftLibraryMethod`.
"""

from __future__ import annotations


def weight_decay_groups(named_params, weight_decay: float, **extra) -> list[dict]:
    """AdamW's usual split of the trainable parameters: decay matrices, not biases or
    normalisation weights (1-D); `extra` (e.g. lr) goes into both groups. Empty groups dropped."""
    decay, no_decay = [], []
    for _, p in named_params:
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, **extra}, {"params": no_decay, "weight_decay": 0.0, **extra}]
    return [g for g in groups if g["params"]]


class PeftMethod:
    is_adapter: bool = False   # True when final/ holds an adapter to load with PeftModel.from_pretrained
    method: str = "none"       # the name final/llmtune.json and the logs record (the YAML's name)
    default_lr: float = 5e-5   # optimizer.lr when the config leaves it unset

    def preflight(self, cfg) -> None:
        """Refuse, with one UserError line, a run this method cannot do (hardware, task, other
        settings), from the composed config alone. Called by config.validate: on the command
        line before anything is written or loaded. Default: nothing to refuse."""

    def apply(self, model, task):
        """Freeze/wrap the model; return the model to train."""
        raise NotImplementedError(f"{type(self).__name__}.apply")

    def param_groups(self, model, lr: float, weight_decay: float) -> list[dict]:
        """The optimizer's parameter groups (the trainable parameters only). A group without
        "lr" takes the optimizer's `lr`; the scheduler scales every group's lr alike.
        Default: decay the matrices, not biases and normalisation weights."""
        return weight_decay_groups(model.named_parameters(), weight_decay)

    def save(self, model, directory, state_dict: dict | None = None) -> None:
        """Write final/ (save_pretrained); state_dict: the gathered weights of a sharded model."""
        model.save_pretrained(directory, state_dict=state_dict)

    def load(self, final, auto, info: dict, base=None):
        """A final/ this method saved, as a model. Default: final/ is a whole model folder."""
        return auto.from_pretrained(final)

    def merged(self, model):
        """The model as one plain transformers model (default: nothing to merge)."""
        return model
