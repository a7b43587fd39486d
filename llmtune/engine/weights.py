"""Which weights ship in final/ and score the test split: the final ones, or the best
checkpoint when trainer.load_best asks for it and it beats them by more than the margin.

The margin is trainer.load_best_margin, or by default one standard error of the validation
main metric (the task's `<main_metric>_stderr`), so that noise in a small validation set never
decides. Pure: the loop loads the weights and logs; this only decides and says why.
"""

from __future__ import annotations

from collections.abc import Callable


def margin_of(tcfg, final: dict, main: str, examples: int) -> tuple[float, str]:
    """How much better the best checkpoint must score to replace the final weights, and why."""
    if tcfg.load_best_margin is not None:
        return float(tcfg.load_best_margin), "trainer.load_best_margin"
    stderr = final.get(f"{main}_stderr")
    if stderr is None:
        return 0.0, f"the task reports no {main}_stderr; set trainer.load_best_margin"
    return float(stderr), f"one standard error of {main} over {examples} validation examples"


def choose(tcfg, task, state, final: dict, examples: int, loadable: Callable[[int], bool]) -> dict:
    """The decision as metrics.json records it (`weights`): shipped (final|best), step, reason,
    load_best, margin, margin_from, and both candidates' validation main metric.
    `loadable(step)` says whether that step's checkpoint is complete."""
    main = task.main_metric
    margin, margin_from = margin_of(tcfg, final, main, examples)
    best_step = state.best_step if state.best_step is not None else state.step
    best_value = state.best_metric if state.best_metric is not None else final[main]
    lead = (best_value - final[main]) * (1 if task.greater_is_better else -1)
    if best_step == state.step or lead <= 0:
        ship_best, reason = False, "no earlier checkpoint scored better"
    elif not tcfg.load_best:
        ship_best, reason = False, f"trainer.load_best=false (the best checkpoint leads by {lead:.4f})"
    elif lead <= margin:
        ship_best, reason = False, f"the best checkpoint leads by {lead:.4f}, not more than the margin"
    elif not loadable(best_step):
        ship_best, reason = False, "the best checkpoint is missing or incomplete"
    else:
        ship_best, reason = True, f"it leads by {lead:.4f}, more than the margin"
    return {
        "shipped": "best" if ship_best else "final", "step": best_step if ship_best else state.step, "reason": reason,
        "load_best": bool(tcfg.load_best), "margin": margin, "margin_from": margin_from,
        "final": {"step": state.step, main: final[main]}, "best": {"step": best_step, main: best_value},
    }
