"""The reward trainer's length-grouped epoch order (``rlhf.reward.length_grouped_order``)."""

import random

from rlhf.reward import length_grouped_order


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
