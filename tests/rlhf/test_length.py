"""Length bias: the reward model's held-out diagnostics on a hand-made pair set, ODIN's loss against its
formula, the `length_control` setting reaching the loss, and the saved ODIN model scoring with its quality
head wherever a reward model is loaded (rlhf.reward.score, PPO, the CLI's metadata)."""
import json
import math
from pathlib import Path

import pytest
import torch

from rlhf.data import PreferencePair
from rlhf.length import length_diagnostics, odin_loss, pearson

TOPICS = ["cats", "dogs", "the sea", "plants", "France", "the sky", "five", "ten"]
# The chosen answer is longer in two of three pairs per topic, shorter in the third.
PAIRS = [PreferencePair(f"Tell me about {t}.", f"Yes, a great and helpful answer about {t}." + " good" * (2 * i),
                        f"No. A bad, awful and wrong answer about {t}." + " bad" * (4 - 2 * i))
         for t in TOPICS for i in range(3)]


def test_length_diagnostics_on_a_hand_made_pair_set():
    # pair:            1     2     3     4     5     6
    chosen_len = [100, 80, 30, 50, 60, 40]
    rejected_len = [50, 40, 90, 70, 60, 20]  # chosen longer: pairs 1, 2, 6; shorter: 3, 4; equal: 5
    chosen_r = [2.0, 1.0, 0.0, 1.0, 0.5, 3.0]
    rejected_r = [1.0, 2.0, 1.0, 1.0, 0.0, 1.0]  # right: 1, 6, 5; wrong: 2, 3; tie: 4
    d = length_diagnostics(chosen_r, rejected_r, chosen_len, rejected_len)
    assert d["eval/pairs"] == 6 and d["eval/pairs_chosen_longer"] == 3 and d["eval/pairs_chosen_shorter"] == 2
    assert d["eval/pairwise_accuracy"] == pytest.approx((1 + 0 + 0 + 0.5 + 1 + 1) / 6)
    assert d["eval/accuracy_chosen_longer"] == pytest.approx(2 / 3)  # pairs 1, 2, 6
    assert d["eval/accuracy_chosen_shorter"] == pytest.approx(0.25)  # pair 3 wrong, pair 4 a tie
    # longer answer scored higher? pair 1 yes, 2 no, 3 yes (rejected 90 chars, reward 1 > 0), 4 tie, 6 yes
    assert d["eval/prefers_longer"] == pytest.approx((1 + 0 + 1 + 0.5 + 1) / 5)
    assert d["eval/longer_wins_baseline"] == pytest.approx((3 + 0.5) / 6)
    rewards, lengths = chosen_r + rejected_r, chosen_len + rejected_len
    mr, ml = sum(rewards) / 12, sum(lengths) / 12
    cov = sum((r - mr) * (x - ml) for r, x in zip(rewards, lengths))
    expected = cov / math.sqrt(sum((r - mr) ** 2 for r in rewards) * sum((x - ml) ** 2 for x in lengths))
    assert d["eval/reward_length_corr"] == pytest.approx(expected)
    assert d["eval/mean_length_chosen"] == pytest.approx(60.0)
    json.dumps(d, allow_nan=False)  # valid JSON for metadata.json and the database


def test_length_diagnostics_leave_undefined_values_empty():
    d = length_diagnostics([1.0, 2.0], [0.0, 0.0], [10, 20], [5, 5])  # no chosen-shorter pair
    assert d["eval/accuracy_chosen_shorter"] is None and d["eval/accuracy_chosen_longer"] == 1.0
    assert length_diagnostics([1.0], [1.0], [3], [3])["eval/reward_length_corr"] is None  # constant reward
    assert length_diagnostics([], [], [], [])["eval/pairs"] == 0
    with pytest.raises(ValueError, match="one reward and one length"):
        length_diagnostics([1.0], [0.0, 1.0], [1], [1])


def test_odin_loss_equals_its_formula():
    q = torch.tensor([1.0, 0.5, -0.2, 0.3], requires_grad=True)  # chosen, chosen, rejected, rejected
    l_head = torch.tensor([0.2, 0.9, 0.1, -0.4], requires_grad=True)
    lengths = torch.tensor([30.0, 80.0, 20.0, 10.0])
    wq, wl = torch.tensor([[1.0, 0.0, 1.0]]), torch.tensor([[0.0, 2.0, 2.0]])
    loss, parts = odin_loss(q, l_head, lengths, wq, wl, length_weight=0.7, orthogonal_weight=0.3,
                            margin=torch.tensor([0.1, 0.0]))
    total = [a + b for a, b in zip([1.0, 0.5, -0.2, 0.3], [0.2, 0.9, 0.1, -0.4])]
    rank = -(math.log(1 / (1 + math.exp(-(total[0] - total[2] - 0.1))))
             + math.log(1 / (1 + math.exp(-(total[1] - total[3]))))) / 2

    def corr(xs, ys):
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
        return sxy / math.sqrt(sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys))

    cq, cl = corr([1.0, 0.5, -0.2, 0.3], lengths.tolist()), corr([0.2, 0.9, 0.1, -0.4], lengths.tolist())
    cosine = 2.0 / (math.sqrt(2) * math.sqrt(8))
    assert float(loss.detach()) == pytest.approx(rank + 0.7 * (abs(cq) + 1 - cl) + 0.3 * cosine, rel=1e-6)
    assert float(parts["odin/quality_length_corr"]) == pytest.approx(cq, rel=1e-6)
    loss.backward()  # differentiable in both heads
    assert q.grad.abs().sum() > 0 and l_head.grad.abs().sum() > 0
    assert float(pearson(torch.ones(4), lengths)) == 0.0  # a constant: 0, not NaN


def test_poe_loss_equals_its_formula():
    from rlhf.length import poe_loss

    q = torch.tensor([0.3, -0.1, 0.2, 0.4])  # chosen, chosen, rejected, rejected
    lengths = torch.tensor([200.0, 40.0, 50.0, 90.0])
    loss, parts = poe_loss(q, torch.tensor(0.8), lengths, margin=torch.tensor([0.0, 0.5]))
    e = [0.8 * math.log1p(x) for x in lengths.tolist()]
    d1, d2 = (0.3 + e[0]) - (0.2 + e[2]), (-0.1 + e[1]) - (0.4 + e[3]) - 0.5
    expected = -(math.log(1 / (1 + math.exp(-d1))) + math.log(1 / (1 + math.exp(-d2)))) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6) and float(parts["poe/length_weight"]) == pytest.approx(0.8)


def test_length_expert_is_the_logistic_regression_on_log_length():
    from rlhf.length import fit_length_expert

    # chosen longer in 3 of 4 pairs, always by the same log-length ratio c: w = logit(3/4) / c
    chosen, rejected = [99, 99, 99, 9], [9, 9, 9, 99]
    c = math.log(100 / 10)
    assert fit_length_expert(chosen, rejected, ridge=0.0) == pytest.approx(math.log(3) / c, rel=1e-9)
    assert fit_length_expert([99, 9], [9, 99]) == pytest.approx(0.0, abs=1e-12)  # length says nothing
    assert 0 < fit_length_expert([99] * 5, [9] * 5) < 10  # always longer: the ridge keeps it finite
    # the pairs' own weights and soft labels: a weightless pair counts for nothing, an even one says nothing
    weighted = fit_length_expert(chosen + [9], rejected + [99], weights=[1, 1, 1, 1, 0], ridge=0.0)
    assert weighted == pytest.approx(math.log(3) / c, rel=1e-9)
    assert fit_length_expert(chosen, rejected, weights=[2] * 4, ridge=0.0) == pytest.approx(math.log(3) / c)
    assert fit_length_expert(chosen, rejected, targets=[0.5] * 4) == pytest.approx(0.0, abs=1e-12)
    # 3 of 4 pairs at target 0.75: the fitted probability of "longer wins" is 0.75 * 3/4 + 0.25 * 1/4
    soft = fit_length_expert(chosen, rejected, targets=[0.75] * 4, ridge=0.0)
    assert soft == pytest.approx(math.log(0.625 / 0.375) / c, rel=1e-9)


def test_poe_setting_reaches_the_loss(tmp_path, tiny_dir):
    """length_control 'poe': the expert's w is fitted on the training pairs and held fixed; the loss is
    Bradley-Terry on the quality head plus w * log(1 + characters)."""
    from rlhf.length import fit_length_expert
    from rlhf.reward import build_reward_trainer

    trainer = build_reward_trainer(_config(tmp_path, tiny_dir, length_control="poe", group_by_length=False), PAIRS)
    w = fit_length_expert([len(p.chosen) for p in PAIRS], [len(p.rejected) for p in PAIRS])
    assert float(trainer.model.length_head.weight) == pytest.approx(w, rel=1e-6) and w != 0
    assert not trainer.model.length_head.weight.requires_grad
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    trainer.model.eval()
    with torch.no_grad():
        quality = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        for w in (0.0, 1.5):
            trainer.model.length_head.weight.fill_(w)
            loss = float(trainer.compute_loss(trainer.model, dict(batch)))
            total = quality + w * torch.log1p(batch["lengths"])
            chosen, rejected = total.chunk(2)
            assert loss == pytest.approx(float(-torch.nn.functional.logsigmoid(chosen - rejected).mean()), rel=1e-5)


def test_length_balance_equals_a_hand_computation():
    """Two equal-count bands of |log length ratio|: the narrow band has two chosen-longer pairs against one
    chosen-shorter, the wide band chosen-longer pairs only (dropped); the equal-length pair keeps its weight."""
    from rlhf.length import length_balance

    #           narrow band (ratio 1.1-1.2)  wide band (ratio 3-5)  equal
    chosen = [109, 119, 99, 499, 399, 299, 50]
    rejected = [99, 99, 119, 99, 99, 99, 50]  # longer, longer, shorter | longer x 3 | equal
    factors, summary = length_balance(chosen, rejected, bins=2)
    # the narrow band weighs 3: each direction gets 1.5, i.e. 1.5 / 2 per chosen-longer pair
    assert factors == pytest.approx([0.75, 0.75, 1.5, 0.0, 0.0, 0.0, 1.0])
    assert summary == {"bins": 2, "pairs_chosen_longer": 5, "pairs_chosen_shorter": 1, "pairs_equal_length": 1,
                       "pairs_dropped": 3, "chosen_longer_share_before": pytest.approx(5 / 6),
                       "chosen_longer_share_after": pytest.approx(0.5)}
    # with the pairs' own weights: the narrow band weighs 2 + 1 + 1 = 4, 2 per direction
    weighted, _ = length_balance(chosen, rejected, weights=[2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 3.0], bins=2)
    assert weighted == pytest.approx([2 / 3, 2 / 3, 2.0, 0.0, 0.0, 0.0, 1.0])
    # one band over every pair: 5 chosen-longer against 1 chosen-shorter, 3 each
    assert length_balance(chosen, rejected, bins=1)[0] == pytest.approx([0.6] * 2 + [3.0] + [0.6] * 3 + [1.0])
    # fewer pairs than bands: at most one band per two pairs, so 3 pairs make one band (not 3 dropped bands)
    few, few_summary = length_balance([109, 119, 99], [99, 99, 119], bins=4)
    assert few == pytest.approx([0.75, 0.75, 1.5]) and few_summary["bins"] == 1 and few_summary["pairs_dropped"] == 0
    with pytest.raises(ValueError, match="bins must be 1 or more"):
        length_balance(chosen, rejected, bins=0)
    with pytest.raises(ValueError, match="2 weights for 7 pairs"):
        length_balance(chosen, rejected, weights=[1.0, 1.0])


def test_length_balance_removes_what_length_says_about_the_label():
    """On pairs where length predicts the label in every band, the balanced weights leave the logistic fit of
    the label on the length difference (the PoE expert) at zero."""
    import random

    from rlhf.length import fit_length_expert, length_balance

    rng = random.Random(0)
    chosen, rejected = [], []
    for _ in range(400):
        a, b = rng.randint(20, 600), rng.randint(20, 600)
        longer_wins = rng.random() < 0.75
        chosen.append(max(a, b) if longer_wins else min(a, b))
        rejected.append(min(a, b) if longer_wins else max(a, b))
    assert fit_length_expert(chosen, rejected, ridge=0.0) > 0.5
    factors, summary = length_balance(chosen, rejected, bins=4)
    assert summary["chosen_longer_share_after"] == pytest.approx(0.5)
    assert fit_length_expert(chosen, rejected, weights=factors, ridge=0.0) == pytest.approx(0.0, abs=0.15)


def test_balance_setting_reaches_the_loss(tmp_path, tiny_dir):
    """length_control 'balance': the trainer's loss on a batch is the weighted Bradley-Terry loss with the
    balanced weights (a pair whose weight is 0 changes nothing), and the run's metadata records the balance."""
    from rlhf.length import length_balance
    from rlhf.reward import build_reward_trainer

    # PAIRS has 8 chosen-longer, 8 chosen-shorter and 8 equal-length pairs; 8 more with the chosen answer longer
    skewed = [PreferencePair(f"Tell me about {t}.", f"A long, careful and kind answer about {t}." + " yes" * 6,
                             f"Bad {t}.") for t in TOPICS] + PAIRS
    config = _config(tmp_path, tiny_dir, length_control="balance", length_balance_bins=1, group_by_length=False)
    trainer = build_reward_trainer(config, skewed)
    assert not hasattr(trainer.model, "length_head")  # per-pair weights only: no PoE expert, no ODIN head
    factors, summary = length_balance([len(p.chosen) for p in skewed], [len(p.rejected) for p in skewed], bins=1)
    assert trainer.rlhf_length_balance == summary and summary["chosen_longer_share_before"] == pytest.approx(2 / 3)
    assert sorted(set(factors)) == pytest.approx([0.75, 1.0, 1.5])  # 16 longer vs 8 shorter; equal ones kept
    assert [row["pair_weight"] for row in trainer.train_dataset] == pytest.approx(factors)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4, 12)])  # 0.75 x 4, then PAIRS[:4]
    trainer.model.train()  # the weights count in training; the held-out loss is the plain one
    with torch.no_grad():
        quality = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        loss = float(trainer.compute_loss(trainer.model, dict(batch)))
    chosen, rejected = quality.chunk(2)
    losses = -torch.nn.functional.logsigmoid(chosen - rejected)
    w = torch.tensor(factors[4:12])
    assert loss == pytest.approx(float((w * losses).sum() / w.sum()), rel=1e-4)
    assert loss != pytest.approx(float(losses.mean()), rel=1e-4)  # not the unweighted mean

    from rlhf.reward import train_reward

    art = train_reward(_config(tmp_path, tiny_dir, length_control="balance", max_steps=2), skewed)
    meta = json.loads((tmp_path / "rm" / "metadata.json").read_text())
    assert meta["reward_head"] == "single head, trained on length-balanced pair weights"
    assert meta["length_balance"]["chosen_longer_share_after"] == pytest.approx(0.5)
    assert "eval/accuracy_chosen_shorter" in art.metrics


def test_balance_with_nothing_to_balance_fails_before_any_model_loads(tmp_path):
    from rlhf.reward import train_reward

    longer_always = [PreferencePair("Q?", "a long and detailed answer", "short") for _ in range(6)]
    with pytest.raises(ValueError, match="'balance' left no pair to train on"):
        train_reward(_config(tmp_path, str(tmp_path / "no-such-model"), length_control="balance",
                             eval_fraction=0.0), longer_always)
    assert not (tmp_path / "rm").exists()


def _config(tmp_path, tiny_dir, **kw):
    from rlhf.reward import RewardRunConfig

    base = dict(output_dir=str(tmp_path / "rm"), model=tiny_dir, max_steps=6, per_device_batch_size=8,
                learning_rate=3e-3, max_length=512, save_steps=0, eval_fraction=0.25, seed=0)
    return RewardRunConfig(**{**base, **kw})


@pytest.mark.parametrize("bad, message", [({"length_control": "length"}, "length_control must be one of"),
                                          ({"odin_length_weight": -1.0}, "odin_length_weight must be 0 or more"),
                                          ({"length_balance_bins": 0}, "length_balance_bins must be a whole number"),
                                          ({"length_balance_bins": 2.5}, "length_balance_bins must be a whole number")])
def test_bad_length_control_fails_before_any_model_loads(tmp_path, bad, message):
    from rlhf.reward import train_reward

    with pytest.raises(ValueError, match=message):
        train_reward(_config(tmp_path, str(tmp_path / "no-such-model"), **bad), PAIRS)


def test_odin_setting_reaches_the_loss(tmp_path, tiny_dir):
    """length_control 'odin' builds ODIN's trainer; its loss on a batch is odin_loss of the model's quality head
    and the length head, and each weight moves the loss by exactly its term."""
    from rlhf.reward import build_reward_trainer

    trainer = build_reward_trainer(_config(tmp_path, tiny_dir, length_control="odin", odin_length_weight=0.0,
                                           odin_orthogonal_weight=0.0, group_by_length=False), PAIRS)
    assert type(trainer).__name__ == "StudioRewardTrainer" and hasattr(trainer.model, "length_head")
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    assert batch["lengths"].tolist() == [float(len(p.chosen)) for p in PAIRS[:8]] + [float(len(p.rejected))
                                                                                      for p in PAIRS[:8]]
    trainer.model.eval()

    def loss_with(length_weight, orthogonal_weight):
        trainer.control.odin_length_weight, trainer.control.odin_orthogonal_weight = length_weight, orthogonal_weight
        with torch.no_grad():
            return float(trainer.compute_loss(trainer.model, dict(batch)))

    plain = loss_with(0.0, 0.0)
    parts = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
    with torch.no_grad():
        quality = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    chosen_q, rejected_q = quality.chunk(2)
    assert parts["accuracy"] == pytest.approx(float((chosen_q > rejected_q).float().mean()))
    term_length = abs(parts["odin/quality_length_corr"]) + 1 - parts["odin/length_head_corr"]
    assert loss_with(2.0, 0.0) == pytest.approx(plain + 2.0 * term_length, rel=1e-5)
    assert loss_with(0.0, 3.0) == pytest.approx(plain + 3.0 * abs(parts["odin/head_cosine"]), rel=1e-5)
    assert parts["odin/loss_rank"] == pytest.approx(plain, rel=1e-5)  # no extra terms: Bradley-Terry on q + l


def head_output(trainer, hidden_last, characters):
    """The length head's output for one answer: ODIN reads the hidden state, PoE the answer's characters."""
    head = trainer.model.length_head
    if trainer.control.length_control == "odin":
        return head(hidden_last)
    return head.weight.reshape(()) * math.log1p(characters)


@pytest.mark.parametrize("control, merge", [("odin", True), ("poe", False)])  # the studio keeps adapters
def test_length_controlled_model_is_saved_as_its_quality_head(tmp_path, tiny_dir, control, merge):
    """After an ODIN (or PoE) run the checkpoint is a plain one-label reward model whose scores are the quality head's
    (not quality + length): rlhf.reward.score, PPO's reward and the run's own held-out metrics agree."""
    from safetensors import safe_open

    from rlhf.models import load_reward_model, load_tokenizer
    from rlhf.ppo import PPOConfig, build_models, score_rollout
    from rlhf.reward import build_reward_trainer, conversation, encode_for_reward, held_out_report, score, train_reward

    config = _config(tmp_path, tiny_dir, length_control=control, merge=merge)
    art = train_reward(config, PAIRS)
    assert art.metrics["eval/pairs"] == 6 and "eval/accuracy_chosen_shorter" in art.metrics
    assert json.loads((tmp_path / "rm" / "metadata.json").read_text())["reward_head"].startswith("quality head")
    weights = "model.safetensors" if merge else "adapter_model.safetensors"
    with safe_open(f"{art.model_dir}/{weights}", "pt") as f:
        assert not [k for k in f.keys() if "length_head" in k]
        assert [f.get_tensor(k).shape[0] for k in f.keys() if "score" in k] == [1]
    model, tok = load_reward_model(art.model_dir, device="cpu"), load_tokenizer(art.model_dir)
    assert model.config.num_labels == 1
    # the run's held-out report is what the saved model gives
    from rlhf.reward import split_pairs

    _, held_out = split_pairs(PAIRS, config.eval_fraction, config.seed)
    again = held_out_report(model, tok, held_out)
    assert again["eval/pairwise_accuracy"] == pytest.approx(art.metrics["eval/pairwise_accuracy"])
    assert again["eval/reward_length_corr"] == pytest.approx(art.metrics["eval/reward_length_corr"], abs=1e-5)

    # In memory, before saving: the quality head alone equals the saved model; quality + length does not.
    trainer = build_reward_trainer(_config(tmp_path, tiny_dir, output_dir=str(tmp_path / "rm2"), length_control=control,
                                           max_steps=3), PAIRS)
    trainer.train()
    items = [conversation(p.prompt, p.chosen) for p in PAIRS[:4]]
    quality, length, hidden = [], [], {}
    hook = trainer._score.register_forward_hook(lambda m, a, o: hidden.__setitem__("h", a[0]))
    trainer.model.eval()
    with torch.no_grad():
        for item in items:
            ids = torch.tensor([encode_for_reward(tok, item)])
            quality.append(float(trainer.model(input_ids=ids).logits[0, 0]))
            length.append(float(head_output(trainer, hidden["h"][0, -1], len(item[-1]["content"]))))
    hook.remove()
    quality, length = torch.tensor(quality), torch.tensor(length)
    assert torch.allclose(score(trainer.model, tok, items), quality, atol=1e-5)  # score() reads the quality head
    assert length.abs().max() > 1e-3 and length.std() > 1e-4  # and the length head would change the ranking
    from rlhf.reward import drop_length_head
    from rlhf.runner import save_final_model

    drop_length_head(trainer.model)
    saved = load_reward_model(save_final_model(trainer, trainer.control, tok), device="cpu")
    assert torch.allclose(score(saved, tok, items), quality, atol=1e-5)
    assert not torch.allclose(score(saved, tok, items), quality + length, atol=1e-4)
    # PPO loads it as its reward model (value model = reward model with its adapter off) and scores the same
    ppo = PPOConfig(output_dir=str(tmp_path / "ppo"), model=tiny_dir, reward_model=str(tmp_path / "rm2" / "model"),
                    device="cpu", max_steps=1, rollout_batch_size=4, mini_batch_size=4, max_new_tokens=4, save_steps=0)
    models = build_models(ppo)
    prompts, completions = [p.prompt for p in PAIRS[:4]], [p.chosen for p in PAIRS[:4]]
    ppo_scores = score_rollout(models, prompts, completions, None, None, 4, None)
    assert torch.allclose(ppo_scores, quality, atol=1e-5)


def test_cli_reward_prints_and_stores_the_length_diagnostics(tmp_path, tiny_dir, capsys):
    from rlhf.__main__ import main
    from rlhf.data import save_jsonl

    data = tmp_path / "pairs.jsonl"
    save_jsonl(PAIRS, data)
    code = main(["reward", "--set", f"model={json.dumps(tiny_dir)}", "--set", f"data={json.dumps(str(data))}",
                 "--set", f"output_dir={json.dumps(str(tmp_path / 'cli'))}", "--set", "max_steps=2",
                 "--set", "max_length=512", "--set", "save_steps=0", "--set", "eval_fraction=0.25",
                 "--set", "length_control=odin"])
    assert code == 0
    final = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    keys = ["eval/pairwise_accuracy", "eval/accuracy_chosen_longer", "eval/accuracy_chosen_shorter",
            "eval/prefers_longer", "eval/longer_wins_baseline", "eval/reward_length_corr"]
    assert all(k in final for k in keys)
    meta = json.loads((tmp_path / "cli" / "metadata.json").read_text())
    assert {k: meta["metrics"][k] for k in keys} == {k: final[k] for k in keys}
    assert meta["config"]["length_control"] == "odin"


def test_odin_resumes_with_its_length_head(tmp_path, tiny_dir):
    from rlhf.reward import LENGTH_HEAD_FILE, build_reward_trainer

    first = build_reward_trainer(_config(tmp_path, tiny_dir, length_control="odin", max_steps=2, save_steps=2), PAIRS)
    first.train()
    saved = first.model.length_head.weight.detach().clone()
    assert (tmp_path / "rm" / "checkpoint-2" / LENGTH_HEAD_FILE).is_file()
    again = build_reward_trainer(_config(tmp_path, tiny_dir, length_control="odin", max_steps=2, save_steps=2), PAIRS)
    assert not torch.equal(again.model.length_head.weight, saved)
    again._load_from_checkpoint(str(tmp_path / "rm" / "checkpoint-2"))
    assert torch.equal(again.model.length_head.weight.detach(), saved)


def test_dpo_logs_the_chosen_and_rejected_lengths(tmp_path, tiny_dir, tiny_tokenizer):
    """One step over all pairs in one batch: lengths/chosen and lengths/rejected are the mean completion tokens."""
    from rlhf.dpo import DPORunConfig, train_dpo
    from rlhf.reward import conversation

    pairs = [PreferencePair(f"Tell me about {t}.", f"A great and helpful answer about {t}, kind and clear." * 2,
                            f"No, {t}.") for t in TOPICS]
    seen = []
    config = DPORunConfig(output_dir=str(tmp_path / "dpo"), model=tiny_dir, max_steps=1, per_device_batch_size=8,
                          learning_rate=3e-3, max_length=512, save_steps=0)
    train_dpo(config, pairs, progress=lambda s, t, m: seen.append(m))

    def completion_tokens(p, text):
        prompt = tiny_tokenizer.apply_chat_template(p.prompt, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True)["input_ids"]
        full = tiny_tokenizer.apply_chat_template(conversation(p.prompt, text), tokenize=True,
                                                  return_dict=True)["input_ids"]
        return len(full) - len(prompt)

    expected_chosen = sum(completion_tokens(p, p.chosen) for p in pairs) / len(pairs)
    expected_rejected = sum(completion_tokens(p, p.rejected) for p in pairs) / len(pairs)
    assert seen[-1]["lengths/chosen"] == pytest.approx(expected_chosen)
    assert seen[-1]["lengths/rejected"] == pytest.approx(expected_rejected)
    assert seen[-1]["lengths/chosen"] > 3 * seen[-1]["lengths/rejected"]


def test_length_calibration_equals_a_hand_computation():
    from rlhf.length import calibrate, fit_length_calibration, length_diagnostics

    # (r_chosen, r_rejected, L_chosen, L_rejected): the labels prefer the longer answer in 2 of 4 pairs, the
    # model in all 4. Ratios d / D (longer minus shorter): 2/100, 0.5/50, 1/200, 3/100 -> sorted 0.03, 0.02,
    # 0.01, 0.005; k = floor(0.5 * 4) = 2, so beta = 0.01 (pair 2 becomes a tie, counted one half).
    rc, rr, lc, lr = [2.0, 1.0, 0.0, 0.0], [0.0, 0.5, 1.0, 3.0], [200, 150, 100, 50], [100, 100, 300, 150]
    fit = fit_length_calibration(rc, rr, lc, lr)
    assert fit["beta"] == pytest.approx(0.01)
    assert fit["pairs"] == 4 and fit["labels_prefer_longer"] == 0.5 and fit["model_prefers_longer"] == 1.0
    assert fit["calibrated_prefers_longer"] == pytest.approx(2.5 / 4)
    # calibrated rewards: 2 - 2 = 0 vs 0 - 1 = -1 (right); 1 - 1.5 = -0.5 vs 0.5 - 1 = -0.5 (tie); 0 - 1 = -1 vs
    # 1 - 3 = -2 (right now); 0 - 0.5 vs 3 - 1.5 (still wrong)
    chosen, rejected = calibrate(rc, lc, fit), calibrate(rr, lr, fit)
    assert chosen.tolist() == pytest.approx([0.0, -0.5, -1.0, -0.5])
    assert rejected.tolist() == pytest.approx([-1.0, -0.5, -2.0, 1.5])
    before = length_diagnostics(rc, rr, lc, lr)
    after = length_diagnostics(chosen, rejected, lc, lr)
    assert before["eval/accuracy_chosen_shorter"] == 0.0 and after["eval/accuracy_chosen_shorter"] == 0.5
    assert after["eval/accuracy_chosen_longer"] == 0.75 and after["eval/pairwise_accuracy"] == 0.625


def test_length_calibration_leaves_a_model_that_prefers_length_no_more_than_its_labels():
    from rlhf.length import calibrate, fit_length_calibration

    # the model prefers the longer answer in 1 of 2 pairs, the labels in 2 of 2: nothing to remove
    fit = fit_length_calibration([1.0, 0.0], [0.0, 1.0], [20, 30], [10, 10])
    assert fit["beta"] == 0.0 and fit["calibrated_prefers_longer"] == fit["model_prefers_longer"] == 0.5
    assert calibrate([1.0, 2.0], [10, 20], fit).tolist() == [1.0, 2.0]
    assert calibrate([1.0, 2.0], [10, 20], None).tolist() == [1.0, 2.0]
    # on log(1 + L), the chosen answer the shorter: the ratio is 1 / (log 21 - log 11); the labels prefer the
    # longer answer in 0 of 1 pairs -> k = 0, beta = that ratio
    fit = fit_length_calibration([0.0], [1.0], [10], [20], scale="log_chars")
    assert fit["beta"] == pytest.approx(1.0 / (math.log(21) - math.log(11)))
    assert calibrate([1.0], [20], fit).tolist() == pytest.approx([1.0 - fit["beta"] * math.log(21)])


@pytest.mark.parametrize("args, message", [
    (([1.0], [0.0], [10], [10]), "differ in length"),
    (([1.0, 2.0], [0.0], [10], [10]), "one reward and one length"),
])
def test_length_calibration_refuses_what_it_cannot_fit(args, message):
    from rlhf.length import fit_length_calibration

    with pytest.raises(ValueError, match=message):
        fit_length_calibration(*args)
    with pytest.raises(ValueError, match="unknown length scale"):
        fit_length_calibration([1.0], [0.0], [20], [10], scale="tokens")


# The chosen answer is the shorter in every pair: the labels never prefer the longer answer, so a model that
# prefers it anywhere gets a calibration (beta > 0).
SHORTER_CHOSEN = [PreferencePair(p.prompt, *sorted([p.chosen, p.rejected], key=len)) for p in PAIRS
                  if len(p.chosen) != len(p.rejected)]


@pytest.mark.parametrize("merge", [True, False])
def test_length_calibration_is_fitted_saved_and_applied_wherever_the_reward_model_scores(tmp_path, tiny_dir, merge):
    """length_calibration 'chars': after training, beta is fitted on the run's training pairs (the scores of
    the saved model, refitted here, give the same beta), stored with the model (config.json, or beside an
    adapter), applied by rlhf.reward.score and by the held-out report (with the uncalibrated diagnostics beside
    it); a reward run from a calibrated checkpoint does not inherit it."""
    from rlhf.length import CONFIG_KEY, calibration_of, fit_length_calibration, length_diagnostics
    from rlhf.models import CALIBRATION_FILE, load_reward_model, load_tokenizer
    from rlhf.reward import conversation, score, score_pairs, split_pairs, train_reward

    # a learning rate of ~0 keeps the random model, which prefers the longer answer in some pairs
    config = _config(tmp_path, tiny_dir, length_calibration="chars", max_steps=2, learning_rate=1e-9,
                     merge=merge, eval_fraction=0.25)
    art = train_reward(config, SHORTER_CHOSEN)
    train, held_out = split_pairs(SHORTER_CHOSEN, config.eval_fraction, config.seed)
    model, tok = load_reward_model(art.model_dir, device="cpu", dtype="float32"), load_tokenizer(art.model_dir)
    calibration = calibration_of(model)
    assert calibration is not None and calibration["scale"] == "chars" and calibration["beta"] > 0
    assert art.metrics["length_calibration/beta"] == pytest.approx(calibration["beta"])
    assert art.metrics["length_calibration/labels_prefer_longer"] == 0.0
    assert art.metrics["length_calibration/calibrated_prefers_longer"] <= 0.5 / art.metrics["length_calibration/pairs"]
    assert (Path(art.model_dir) / CALIBRATION_FILE).is_file() == (not merge)
    # refit on the saved model's uncalibrated scores of the same training pairs: the same beta
    chosen, rejected = score_pairs(model, tok, train, calibrated=False)
    refit = fit_length_calibration(chosen, rejected, [len(p.chosen) for p in train], [len(p.rejected) for p in train])
    assert refit["beta"] == pytest.approx(calibration["beta"], rel=1e-4)
    # score() applies it: r - beta x characters of the answer
    items = [conversation(p.prompt, p.chosen) for p in held_out]
    raw = score(model, tok, items, calibrated=False)
    expected = raw - calibration["beta"] * torch.tensor([float(len(p.chosen)) for p in held_out])
    assert torch.allclose(score(model, tok, items), expected, atol=1e-5)
    # the run's held-out report is the calibrated reward's, the uncalibrated one beside it
    c, r = score_pairs(model, tok, held_out, calibrated=False)
    lc, lr = [len(p.chosen) for p in held_out], [len(p.rejected) for p in held_out]
    raw_report = length_diagnostics(c, r, lc, lr)
    cal_report = length_diagnostics(c - calibration["beta"] * torch.tensor(lc, dtype=torch.float32),
                                    r - calibration["beta"] * torch.tensor(lr, dtype=torch.float32), lc, lr)
    assert art.metrics["eval/pairwise_accuracy"] == pytest.approx(cal_report["eval/pairwise_accuracy"])
    assert art.metrics["eval/uncalibrated/pairwise_accuracy"] == pytest.approx(raw_report["eval/pairwise_accuracy"])
    assert art.metrics["eval/uncalibrated/prefers_longer"] == pytest.approx(raw_report["eval/prefers_longer"])
    meta = json.loads((tmp_path / "rm" / "metadata.json").read_text())
    assert meta["config"]["length_calibration"] == "chars" and "length_calibration/beta" in meta["metrics"]
    # a plain reward run started from the calibrated checkpoint drops the calibration it would inherit
    again = train_reward(_config(tmp_path, art.model_dir, output_dir=str(tmp_path / "rm2"), max_steps=1,
                                 merge=merge), SHORTER_CHOSEN)
    reloaded = load_reward_model(again.model_dir, device="cpu", dtype="float32")
    assert calibration_of(reloaded) is None and getattr(reloaded.config, CONFIG_KEY, {}).get("beta", 0.0) == 0.0
    assert "eval/uncalibrated/pairwise_accuracy" not in again.metrics


@pytest.mark.parametrize("bad, message", [({"length_calibration": "tokens"}, "length_calibration must be one of"),
                                          ({"length_calibration_pairs": 1}, "length_calibration_pairs must be"),
                                          ({"length_calibration_pairs": 2.5}, "length_calibration_pairs must be")])
def test_bad_length_calibration_fails_before_any_model_loads(tmp_path, bad, message):
    from rlhf.reward import train_reward

    with pytest.raises(ValueError, match=message):
        train_reward(_config(tmp_path, str(tmp_path / "no-such-model"), **bad), PAIRS)
    assert not (tmp_path / "rm").exists()


def test_reward_length_bench_reads_the_calibration_off_saved_scores(tmp_path):
    """bench/reward_length.py: a run's saved per-pair scores give one derived row per length scale, the
    calibration fitted on the run's training pairs and read on its held-out pairs."""
    from rlhf.length import calibrate, fit_length_calibration
    from tests.conftest import load_bench_module

    bench = load_bench_module("reward_length")
    calibration = {"chosen": [2.0, 1.0, 0.0, 0.0], "rejected": [0.0, 0.5, 1.0, 3.0],
                   "chosen_chars": [200, 150, 100, 50], "rejected_chars": [100, 100, 300, 150]}
    test = {"chosen": [1.0, 0.2, 0.9], "rejected": [0.0, 0.4, 1.0], "chosen_chars": [90, 20, 40],
            "rejected_chars": [30, 60, 200]}
    path = tmp_path / "scores.json"
    path.write_text(json.dumps({"calibration": calibration, "test": test}))
    record = {"method": "plain", "seed": 0, "scores": str(path), "metrics": {}}
    rows = bench.calibrated_records([record, {"method": "poe", "seed": 0, "metrics": {}}])
    assert [r["method"] for r in rows] == ["plain + calibration (chars)", "plain + calibration (log_chars)"]
    fit = fit_length_calibration(calibration["chosen"], calibration["rejected"], calibration["chosen_chars"],
                                 calibration["rejected_chars"])
    assert rows[0]["calibration"] == fit and fit["beta"] == pytest.approx(0.01)
    expected = length_diagnostics(calibrate(test["chosen"], test["chosen_chars"], fit),
                                  calibrate(test["rejected"], test["rejected_chars"], fit),
                                  test["chosen_chars"], test["rejected_chars"])
    assert rows[0]["metrics"] == expected
    # the two chosen-shorter pairs, wrong as scored, turn right: 0.2 - 0.2 > 0.4 - 0.6 and 0.9 - 0.4 > 1.0 - 2.0
    assert length_diagnostics(test["chosen"], test["rejected"], test["chosen_chars"],
                              test["rejected_chars"])["eval/accuracy_chosen_shorter"] == 0.0
    assert expected["eval/accuracy_chosen_shorter"] == 1.0 and expected["eval/pairwise_accuracy"] == 1.0
