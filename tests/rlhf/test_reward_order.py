"""The reward trainer's epoch orders (``rlhf.reward.length_grouped_order``, ``prompt_grouped_order``) and
``group_by_prompt``'s one forward pass per distinct conversation (``distinct_rows``, tiny model on CPU)."""

import random
from dataclasses import replace

import pytest
import torch

from rlhf.data import PreferencePair
from rlhf.reward import distinct_rows, length_grouped_order, prompt_grouped_order


def padded_tokens(order, lengths, batch):
    return sum(max(lengths[i] for i in order[b:b + batch]) * len(order[b:b + batch]) for b in range(0, len(order), batch))


def test_order_is_a_permutation_with_far_less_padding():
    rng = random.Random(1)
    lengths = [rng.choice([20, 40, 80, 300, 700]) + rng.randrange(10) for _ in range(1003)]
    order = length_grouped_order(lengths, batch_size=8, seed=0)
    assert sorted(order) == list(range(len(lengths)))  # every pair exactly once
    shuffled = list(range(len(lengths)))
    random.Random(0).shuffle(shuffled)
    assert padded_tokens(order, lengths, 8) < 0.6 * padded_tokens(shuffled, lengths, 8)
    assert padded_tokens(order, lengths, 8) < 1.5 * sum(lengths)  # measured 1.36 (random order: 2.55)


def test_order_is_seeded_and_batches_are_not_sorted_globally():
    lengths = list(range(400))
    a = length_grouped_order(lengths, 4, seed=3)
    assert a == length_grouped_order(lengths, 4, seed=3)
    assert a != length_grouped_order(lengths, 4, seed=4)
    firsts = [lengths[a[b]] for b in range(0, len(a), 4)]
    assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)  # batch order is shuffled


def test_small_inputs():
    assert length_grouped_order([], 8, seed=0) == []
    assert sorted(length_grouped_order([5, 1, 3], 8, seed=0)) == [0, 1, 2]


def test_prompt_grouped_order_keeps_a_prompts_pairs_together():
    rng = random.Random(2)
    prompts, lengths = [], []
    for p in range(60):  # 60 prompts, each with 6 pairs (a ranking of 4 answers), interleaved as exports list them
        n = rng.randrange(30, 400)
        prompts += [f"prompt {p}"] * 6
        lengths += [n + rng.randrange(5) for _ in range(6)]
    mixed = list(range(len(prompts)))
    rng.shuffle(mixed)
    prompts, lengths = [prompts[i] for i in mixed], [lengths[i] for i in mixed]
    order = prompt_grouped_order(prompts, lengths, batch_size=6, seed=0)
    assert sorted(order) == list(range(len(prompts)))
    batches = [order[b:b + 6] for b in range(0, len(order), 6)]
    assert all(len({prompts[i] for i in batch}) == 1 for batch in batches)  # one prompt per batch here
    assert order == prompt_grouped_order(prompts, lengths, batch_size=6, seed=0)
    assert order != prompt_grouped_order(prompts, lengths, batch_size=6, seed=1)
    firsts = [lengths[b[0]] for b in batches]
    assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)  # batch order is shuffled
    eight = prompt_grouped_order(prompts, lengths, batch_size=8, seed=0)  # batches cut across prompts:
    assert max(len({prompts[i] for i in eight[b:b + 8]}) for b in range(0, len(eight), 8)) <= 3  # random: ~8
    messages = [[{"role": "user", "content": p}] for p in prompts]  # chat prompts group the same way
    assert prompt_grouped_order(messages, lengths, batch_size=6, seed=0) == order
    assert prompt_grouped_order([], [], 8, seed=0) == []


def test_distinct_rows_ignores_what_lies_under_the_padding():
    ids = torch.tensor([[5, 6, 7], [1, 2, 0], [5, 6, 7], [1, 2, 9], [1, 2, 0], [4, 0, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]])
    first, inverse = distinct_rows(ids, mask)
    assert first.tolist() == [0, 1, 4, 5]  # row 3 is row 1 with other padding; row 4 has one more real token
    assert inverse.tolist() == [0, 1, 0, 1, 2, 3]
    assert torch.equal(ids[first][inverse].masked_fill(mask == 0, 0), ids.masked_fill(mask == 0, 0))


TOPICS = ["cats", "dogs", "the sea", "plants"]


def _ranking_pairs():
    """Two prompts, each a ranking of 3 answers labelled by two annotators: 12 pairs, 6 distinct answers."""
    pairs = []
    for topic in TOPICS[:2]:
        answers = [f"A careful answer about {topic}.", f"An answer about {topic}.", f"No idea about {topic}."]
        for annotator in (0, 1):
            pairs += [PreferencePair(f"Tell me about {topic}.", answers[i], answers[j], weight=1.0 - 0.25 * annotator)
                      for i, j in ((0, 1), (0, 2), (1, 2))]
    return pairs


def _trainer(tmp_path, tiny_dir, pairs, **kw):
    from rlhf.reward import RewardRunConfig, build_reward_trainer

    config = RewardRunConfig(output_dir=str(tmp_path / "rm"), model=tiny_dir, max_steps=1, per_device_batch_size=12,
                             max_length=512, save_steps=0, eval_fraction=0.0, seed=0, lora_dropout=0.0,
                             group_by_length=False, **kw)
    return build_reward_trainer(config, pairs)


@pytest.mark.parametrize("kw", [{}, {"center_rewards_coefficient": 0.5},  # TRL's trainer vs the studio's
                                {"label_weights": "weight", "length_control": "odin"},
                                {"label_weights": "soft", "length_control": "poe"}])
def test_group_by_prompt_gives_the_same_loss_and_gradients_from_fewer_rows(tmp_path, tiny_dir, kw):
    pairs = _ranking_pairs()
    if kw.get("label_weights") == "soft":
        pairs = [replace(p, confidence=0.6 + 0.1 * (i % 4)) for i, p in enumerate(pairs)]
    results = {}
    for grouped in (False, True):
        torch.manual_seed(0)
        trainer = _trainer(tmp_path / str(grouped), tiny_dir, pairs, group_by_prompt=grouped, **kw)
        model = trainer.model
        model.train()
        rows = []
        hook = model.get_input_embeddings().register_forward_hook(lambda m, i, o: rows.append(o.shape[0]))
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
        model.zero_grad()
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        hook.remove()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        results[grouped] = float(loss.detach()), grads, rows, dict(trainer._metrics["train"])
    (plain, g_plain, rows_plain, _), (grouped, g_grouped, rows_grouped, metrics) = results[False], results[True]
    assert rows_plain == [24] and rows_grouped == [6]  # 12 pairs = 24 rows, 6 distinct conversations
    assert metrics["scored_share"] == [0.25]
    assert grouped == pytest.approx(plain, rel=1e-5)
    assert g_plain.keys() == g_grouped.keys() and g_plain
    worst = max((g_plain[k] - g_grouped[k]).abs().max() / g_plain[k].abs().max().clamp_min(1e-12) for k in g_plain)
    assert worst < 1e-4, worst


def test_a_reward_run_grouped_by_prompt_trains_in_that_order(tmp_path, tiny_dir):
    from rlhf.contract import read_metadata
    from rlhf.reward import RewardRunConfig, build_reward_trainer, train_reward

    pairs = _ranking_pairs() * 2
    random.Random(0).shuffle(pairs)  # the two prompts' 12 pairs each, interleaved
    config = RewardRunConfig(output_dir=str(tmp_path / "rm"), model=tiny_dir, num_train_epochs=1,
                             per_device_batch_size=6, max_length=512, save_steps=0, eval_fraction=0.0, seed=0,
                             group_by_prompt=True, logging_steps=1)
    trainer = build_reward_trainer(config, pairs)
    decode = trainer.processing_class.decode
    topics = [[t for t in TOPICS if t in decode(row["chosen_ids"])] for row in trainer.train_dataset]
    assert len(topics) == len(pairs) and all(len(t) == 1 for t in topics)
    batches = [{t[0] for t in topics[b:b + 6]} for b in range(0, len(topics), 6)]
    assert all(len(batch) == 1 for batch in batches), batches  # each batch of 6 pairs holds one prompt
    art = train_reward(config, pairs, eval_pairs=pairs[:4])
    assert art.status == "succeeded" and art.global_step == 4
    assert read_metadata(art.output_dir)["config"]["group_by_prompt"] is True
    assert 0 <= art.metrics["eval/pairwise_accuracy"] <= 1
