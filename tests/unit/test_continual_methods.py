"""Each continual method's math in isolation: EWC's penalty and gradient against a hand-computed
case, the Fisher estimate on a tiny model, online accumulation, L2-SP, LwF's tempered KL, the
replay buffer (reservoir determinism, ratio), head growth, the report's numbers, and the
penalty's exactness under gradient accumulation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmtune.continual import report
from llmtune.continual.methods import replay
from llmtune.continual.methods.adapters import Adapters
from llmtune.continual.methods.base import build_method
from llmtune.continual.methods.ewc import accumulate, fisher_diagonal, normalized
from llmtune.continual.methods.lwf import distillation_sum
from llmtune.continual.methods.naive import Naive
from llmtune.continual.methods.penalty import penalty_term, quadratic_penalty
from llmtune.continual.transfer import copy_weights, merged_labels
from llmtune.errors import UserError


def test_ewc_penalty_value_and_gradient_by_hand():
    theta = torch.tensor([1.0, 2.0, -1.0], requires_grad=True)
    anchor, fisher, lam = torch.tensor([0.5, 2.0, 0.0]), torch.tensor([2.0, 3.0, 0.5]), 4.0
    p = quadratic_penalty({"w": theta}, {"w": anchor}, {"w": fisher}, lam)
    # lam/2 * (2*0.25 + 3*0 + 0.5*1) = 2 * 1.0
    assert float(p.detach()) == pytest.approx(2.0)
    p.backward()
    # d/dtheta = lam * F * (theta - anchor) = 4 * [2*0.5, 0, 0.5*-1]
    assert theta.grad.tolist() == pytest.approx([4.0, 0.0, -2.0])


def test_l2sp_is_the_unweighted_penalty_and_covers_old_rows_of_a_grown_head():
    head = torch.tensor([[1.0, 1.0], [2.0, 0.0], [9.0, 9.0]], requires_grad=True)  # 3 classes now
    anchor = torch.tensor([[0.0, 1.0], [2.0, 2.0]])                                # 2 before
    p = quadratic_penalty({"h": head}, {"h": anchor}, None, 0.5)
    assert float(p.detach()) == pytest.approx(0.25 * (1 + 4))  # the new row (9, 9) is not penalised
    p.backward()
    assert head.grad[2].tolist() == [0.0, 0.0]
    assert head.grad[0].tolist() == pytest.approx([0.5, 0.0])


def test_penalty_term_is_the_penalty_times_labelled_positions():
    theta = torch.tensor([1.0], requires_grad=True)
    term = penalty_term({"w": theta}, {"w": torch.tensor([0.0])}, None, 2.0)
    labels = torch.tensor([[1, -100, 2], [-100, -100, 0]])
    assert float(term(None, {}, torch.zeros(2, 3, 4), labels)) == pytest.approx(1.0 * 3)


def test_fisher_of_a_tiny_model_is_the_mean_squared_per_example_gradient():
    torch.manual_seed(0)
    linear = torch.nn.Linear(3, 2)
    xs, ys = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])

    class Task:
        def logits(self, model, batch, labels):
            return model(batch["x"]), labels

        def loss(self, logits, labels):
            return F.cross_entropy(logits, labels, reduction="sum")

    collate = lambda fs: {"x": torch.stack([f["x"] for f in fs]), "labels": torch.stack([f["y"] for f in fs])}  # noqa: E731
    fisher = fisher_diagonal(linear, Task(), [{"x": x, "y": y} for x, y in zip(xs, ys, strict=True)], collate)
    expected = torch.zeros_like(linear.weight)
    for x, y in zip(xs, ys, strict=True):  # by hand: softmax - onehot, outer x, squared
        p = torch.softmax(linear(x), -1).detach()
        expected += (torch.outer(p - F.one_hot(y, 2).float(), x)) ** 2
    assert torch.allclose(fisher["weight"], expected / 4, atol=1e-6)
    assert linear.weight.grad is None


def test_online_ewc_decays_older_fisher_and_grows_with_the_head():
    old = {"h": torch.tensor([[1.0, 1.0]])}
    new = {"h": torch.tensor([[2.0, 0.0], [5.0, 5.0]])}
    out = accumulate(old, new, gamma=0.5)
    assert out["h"].tolist() == [[2.5, 0.5], [5.0, 5.0]]
    assert new["h"].tolist() == [[2.0, 0.0], [5.0, 5.0]]  # inputs unchanged


def test_normalized_fisher_has_mean_one_over_all_weights():
    fisher = {"a": torch.tensor([1e-8, 3e-8]), "b": torch.tensor([[0.0, 4e-8]])}
    out = normalized(fisher)
    assert torch.allclose(torch.cat([out["a"], out["b"].flatten()]), torch.tensor([0.5, 1.5, 0.0, 2.0]))
    assert normalized({"a": torch.zeros(3)})["a"].tolist() == [0.0, 0.0, 0.0]  # nothing to scale


def test_lwf_kl_with_temperature_by_hand_on_the_old_classes_only():
    student = torch.tensor([[1.0, 0.0, 7.0], [0.0, 2.0, -3.0]])   # 3 classes; the teacher knew 2
    teacher = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([2, -100])                               # the second row is not labelled
    T = 2.0
    ps = torch.softmax(student[0, :2] / T, -1)
    pt = torch.softmax(teacher[0] / T, -1)
    by_hand = T**2 * float((pt * (pt.log() - ps.log())).sum())
    assert float(distillation_sum(student, teacher, labels, T)) == pytest.approx(by_hand, rel=1e-5)
    assert float(distillation_sum(teacher, teacher, labels, T)) == pytest.approx(0.0, abs=1e-7)


def test_reservoir_buffer_is_deterministic_uniform_and_nested():
    def buffer(seed, stages, budget):
        keys = [(k, s, r) for s in range(1, stages + 1) for r, k in enumerate(replay.reservoir_keys(seed, s, 500))]
        return replay.select_buffer(keys, [1] * len(keys), budget)

    a, b, other = buffer(42, 2, 100), buffer(42, 2, 100), buffer(7, 2, 100)
    assert a == b and a != other and len(a) == 100
    share = sum(1 for s, _ in a if s == 1) / len(a)
    assert 0.35 < share < 0.65  # both stages represented about equally
    # After a third stage, what stays of the first two is a subset of what was there (reservoir).
    later = buffer(42, 3, 100)
    assert {x for x in later if x[0] < 3} <= set(a)
    # A token budget: the smallest keys that fit.
    keys = [(0.1, 1, 0), (0.2, 1, 1), (0.3, 1, 2)]
    assert replay.select_buffer(keys, [5, 4, 1], 9) == [(1, 0), (1, 1)]


def test_replay_mixer_adds_the_ratio_and_draws_the_same_under_the_same_seed():
    buffer = [{"id": i} for i in range(50)]
    mix = replay.mixer(buffer, 0.25)
    features = [{"id": -1}] * 12
    torch.manual_seed(3)
    first = mix(features)
    torch.manual_seed(3)
    again = mix(features)
    assert first == again
    added = [f for f in first if f["id"] >= 0]
    assert len(added) == 4 and len(added) / len(first) == 0.25  # round(12 * .25 / .75)
    assert replay.replay_count(16, 0.5) == 16 and replay.replay_count(16, 0.0) == 0
    assert replay.mixer(buffer, 0.25, rank=1)(features) != first  # processes replay different examples


def test_head_growth_copies_old_rows_and_keeps_new_rows():
    torch.manual_seed(0)
    old, new = torch.nn.Linear(4, 2), torch.nn.Linear(4, 3)
    fresh_row = new.weight[2].detach().clone()
    counts = copy_weights(old.state_dict(), new)
    assert counts == {"copied": 0, "grown": 2, "kept": 0}
    assert torch.equal(new.weight[:2], old.weight) and torch.equal(new.bias[:2], old.bias)
    assert torch.equal(new.weight[2], fresh_row)
    assert merged_labels(["b", "a"], ["c", "a", "d"]) == ["b", "a", "c", "d"]


def test_adapters_score_each_stage_with_its_own_adapter():
    assert [Adapters().eval_stage(3, j) for j in (1, 2, 3)] == [1, 2, 3]
    assert [Naive().eval_stage(3, j) for j in (1, 2, 3)] == [3, 3, 3]
    assert Adapters().stage_overrides() == ["peft=lora"] and not Adapters().starts_from_previous


def test_method_options_are_checked_in_one_line():
    from omegaconf import OmegaConf

    method = build_method(OmegaConf.create({"_target_": "llmtune.continual.methods.ewc.EWC", "method": "ewc", "lambda": 3.0, "gamma": 0.9}))
    assert (method.lam, method.gamma) == (3.0, 0.9)
    with pytest.raises(UserError, match="replay_ratio"):
        build_method(OmegaConf.create({"_target_": "llmtune.continual.methods.replay.Replay", "replay_ratio": 1.0}))
    with pytest.raises(UserError, match="not both"):
        build_method(OmegaConf.create({"_target_": "llmtune.continual.methods.replay.Replay", "buffer_size": 10, "buffer_tokens": 10}))
    with pytest.raises(UserError, match="does not take"):
        build_method(OmegaConf.create({"_target_": "llmtune.continual.methods.l2sp.L2SP", "lamda": 1.0}))


def test_report_numbers_by_hand():
    names = ["a", "b", "c"]
    R = [[0.9, 0.2, 0.1], [0.6, 0.8, 0.3], [0.5, 0.7, 0.9]]
    s = report.summary(names, R, {"b": 0.1, "c": 0.2})
    assert s["average_final"] == pytest.approx((0.5 + 0.7 + 0.9) / 3)
    assert s["bwt"] == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)
    assert s["fwt"] == pytest.approx(((0.2 - 0.1) + (0.3 - 0.2)) / 2)
    assert s["forgetting"] == pytest.approx(((0.9 - 0.5) + (0.8 - 0.7)) / 2)
    unscored = report.summary(names, [[0.9, None, None], [0.6, 0.8, None], [0.5, 0.7, 0.9]], {})
    assert unscored["fwt"] is None and not math.isnan(unscored["bwt"])


def test_ewc_without_the_head_anchors_the_backbone_only():
    """continual.anchor_head=false: the penalty leaves the task head free (anchors_from with
    skip_heads), every backbone weight stays anchored."""
    from transformers import BertConfig, BertForTokenClassification

    from llmtune.continual.methods.ewc import EWC
    from llmtune.continual.methods.penalty import anchors_from

    model = BertForTokenClassification(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, num_labels=3))
    params = dict(model.named_parameters())
    backbone = {n for n in params if not n.startswith("classifier.")}
    assert set(anchors_from(model, params, skip_heads=True)) == backbone
    assert set(anchors_from(model, params, skip_heads=False)) == set(params)
    assert EWC(anchor_head=False).anchor_head is False and EWC().anchor_head is True
