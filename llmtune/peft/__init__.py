"""Parameter-efficient fine-tuning methods. Each method is one module with a class that the
`peft` config group instantiates; the builders call `apply(model, task)` and `save(model, dir)`.
Every class derives from `base.PeftMethod`, which declares each hook with its default
(preflight, param_groups, load, merged, ...); peft-library methods from `library.PeftLibraryMethod`.

    is_adapter   True when final/ holds an adapter to load with PeftModel.from_pretrained
    apply        freeze/wrap the model; return the model to train
    save         write final/ (save_pretrained); state_dict: the gathered weights of a sharded model
"""
