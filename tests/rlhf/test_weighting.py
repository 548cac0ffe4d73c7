"""Per-pair weights and soft labels reach the reward model's and DPO's losses (tiny model, CPU)."""
import math
from dataclasses import replace

import pytest
import torch

from rlhf.data import PreferencePair
from rlhf.weighting import bradley_terry, select_pairs, summary

TOPICS = ["cats", "dogs", "the sea", "plants"]
PAIRS = [PreferencePair(f"Tell me about {t}.", f"Yes, a helpful answer about {t}.", f"No. A bad answer about {t}.")
         for t in TOPICS]


def test_bradley_terry_hand_computed():
    d = torch.tensor([0.0, math.log(3.0)])  # sigmoid: 0.5 and 0.75
    assert float(bradley_terry(d)) == pytest.approx((math.log(2) + math.log(4 / 3)) / 2)
    # weights (1, 0): only the first pair counts
    assert float(bradley_terry(d, weights=torch.tensor([1.0, 0.0]))) == pytest.approx(math.log(2))
    # soft label 0.75 on the second pair: -(0.75 log 0.75 + 0.25 log 0.25)
    soft = float(bradley_terry(d[1:], targets=torch.tensor([0.75])))
    assert soft == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert float(bradley_terry(d, weights=torch.zeros(2))) == 0.0


def test_select_pairs_drops_and_splits():
    pairs = [replace(PAIRS[0], weight=0.0, confidence=0.9), replace(PAIRS[1], weight=0.5, confidence=0.55),
             replace(PAIRS[2], confidence=None)]
    assert [p.chosen for p in select_pairs(pairs, mode="weight")] == [PAIRS[1].chosen, PAIRS[2].chosen]
    assert len(select_pairs(pairs, mode="none")) == 3  # weights ignored
    assert [p.chosen for p in select_pairs(pairs, mode="none", min_confidence=0.6)] == [PAIRS[0].chosen, PAIRS[2].chosen]
    split = select_pairs([pairs[1]], mode="soft", duplicate_soft=True)
    assert [(p.chosen, p.rejected, p.weight) for p in split] == [
        (PAIRS[1].chosen, PAIRS[1].rejected, 0.55), (PAIRS[1].rejected, PAIRS[1].chosen, pytest.approx(0.45))]
    record = summary(pairs, split, mode="soft", min_confidence=0.0)
    assert record["pairs_given"] == 3 and record["pairs_trained"] == 2 and len(record["weights_hash"]) == 64


def _grads(trainer, rows):
    """Gradients of the trainable parameters after one training-mode loss on the collated rows."""
    model = trainer.model
    model.train()
    model.zero_grad()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in rows])
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


def _same(a, b):
    assert a.keys() == b.keys()
    return all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-4) for k in a)


def _rm(tmp_path, tiny_dir, pairs, **kw):
    from rlhf.reward import RewardRunConfig, build_reward_trainer

    config = RewardRunConfig(output_dir=str(tmp_path / "rm"), model=tiny_dir, max_steps=1, per_device_batch_size=2,
                             max_length=512, save_steps=0, eval_fraction=0.0, seed=0, lora_dropout=0.0,
                             group_by_length=False, **kw)
    return build_reward_trainer(config, pairs)


@pytest.mark.parametrize("control", ["none", "poe"])
def test_zero_weight_pair_changes_nothing_in_the_reward_model(tmp_path, tiny_dir, control):
    pairs = [replace(PAIRS[0], weight=1.0), replace(PAIRS[1], weight=0.0)]
    weighted = _grads(_rm(tmp_path, tiny_dir, pairs, label_weights="weight", length_control=control), [0, 1])
    alone = _grads(_rm(tmp_path, tiny_dir, pairs[:1], label_weights="weight", length_control=control), [0])
    unweighted = _grads(_rm(tmp_path, tiny_dir, pairs, label_weights="none", length_control=control), [0, 1])
    assert _same(weighted, alone)
    assert not _same(weighted, unweighted)  # the weight did reach the loss


def test_soft_label_reaches_the_reward_loss(tmp_path, tiny_dir):
    from rlhf.weighting import bradley_terry as bt

    trainer = _rm(tmp_path, tiny_dir, [replace(PAIRS[0], confidence=0.25), replace(PAIRS[1], confidence=1.0)],
                  label_weights="soft")
    trainer.model.train()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in (0, 1)])
    assert batch["targets"].tolist() == [0.25, 1.0]
    with torch.no_grad():
        loss = float(trainer.compute_loss(trainer.model, dict(batch)))
        scores = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
    chosen, rejected = scores.chunk(2)
    assert loss == pytest.approx(float(bt(chosen - rejected, targets=torch.tensor([0.25, 1.0]))), rel=1e-5)


def _dpo(tmp_path, tiny_dir, pairs, **kw):
    from rlhf.dpo import DPORunConfig, build_dpo_trainer

    config = DPORunConfig(output_dir=str(tmp_path / "dpo"), model=tiny_dir, max_steps=1, per_device_batch_size=2,
                          max_length=512, save_steps=0, seed=0, lora_dropout=0.0, **kw)
    return build_dpo_trainer(config, pairs)


def test_zero_weight_pair_changes_nothing_in_dpo(tmp_path, tiny_dir):
    pairs = [replace(PAIRS[0], weight=1.0), replace(PAIRS[1], weight=0.0)]
    weighted = _grads(_dpo(tmp_path, tiny_dir, pairs, label_weights="weight"), [0, 1])
    alone = _grads(_dpo(tmp_path, tiny_dir, pairs[:1], label_weights="weight"), [0])
    unweighted = _grads(_dpo(tmp_path, tiny_dir, pairs, label_weights="none"), [0, 1])
    assert _same(weighted, alone)
    assert not _same(weighted, unweighted)


def test_half_weight_is_a_weighted_mean_in_dpo(tmp_path, tiny_dir):
    """Weights (1, 1/3): the gradient is (3/4)·g1 + (1/4)·g2, with g1, g2 each pair's own gradient."""
    pairs = [replace(PAIRS[0], weight=1.0), replace(PAIRS[1], weight=1 / 3)]
    both = _grads(_dpo(tmp_path, tiny_dir, pairs, label_weights="weight"), [0, 1])
    g1 = _grads(_dpo(tmp_path, tiny_dir, pairs[:1], label_weights="weight"), [0])
    g2 = _grads(_dpo(tmp_path, tiny_dir, pairs[1:], label_weights="weight"), [0])
    assert _same(both, {k: 0.75 * g1[k] + 0.25 * g2[k] for k in g1})


@pytest.mark.parametrize("bad, message", [({"label_weights": "votes"}, "label_weights must be one of"),
                                          ({"min_confidence": 1.0}, "min_confidence must lie in")])
def test_bad_weighting_settings_fail_before_any_model_loads(tmp_path, bad, message):
    from rlhf.dpo import DPORunConfig, train_dpo
    from rlhf.reward import RewardRunConfig, train_reward

    with pytest.raises(ValueError, match=message):
        train_reward(RewardRunConfig(output_dir=str(tmp_path / "rm"), model=str(tmp_path / "none"), **bad), PAIRS)
    with pytest.raises(ValueError, match=message):
        train_dpo(DPORunConfig(output_dir=str(tmp_path / "d"), model=str(tmp_path / "none"), **bad), PAIRS)


def test_reward_run_records_its_weighting(tmp_path, tiny_dir):
    from rlhf.contract import read_metadata
    from rlhf.reward import RewardRunConfig, train_reward

    pairs = [replace(p, weight=w, confidence=c) for p, w, c in zip(PAIRS * 2, [1, 0, 1, 1, 0.5, 1, 1, 1],
                                                                   [0.9, 0.9, 0.4, 0.8, 0.7, 0.9, 0.9, 0.9])]
    config = RewardRunConfig(output_dir=str(tmp_path / "rm"), model=tiny_dir, max_steps=2, per_device_batch_size=2,
                             max_length=512, save_steps=0, eval_fraction=0.0, seed=0, label_weights="weight",
                             min_confidence=0.5)
    artifacts = train_reward(config, pairs)
    record = read_metadata(artifacts.output_dir)["label_weighting"]
    assert record["label_weights"] == "weight" and record["pairs_given"] == 8 and record["pairs_trained"] == 6  # one weight 0, one below 0.5
    with pytest.raises(ValueError, match="no pair is left to train on"):
        train_reward(replace(config, min_confidence=0.95), pairs)
