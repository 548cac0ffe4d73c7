"""rlhf.active: the bootstrap-head ensemble separates what the reward model does not know from near-ties,
and rlhf.reward.score hands out the features its score head reads."""
import math

import pytest
import torch

from rlhf.active import bootstrap_heads, ensemble_scores, head_weight, pairwise_bald
from rlhf.judge import pairwise_entropy

H = 8
TRUE = torch.tensor([2.0, -1.0, 1.5, 1.0, 0.0, 0.0, 0.0, 0.0])


def labelled_diffs(n=400, seed=0):
    """Pairs whose answers differ only in the first 4 feature directions, labelled by a logistic oracle."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.zeros(n, H), torch.zeros(n, H)
    a[:, :4], b[:, :4] = torch.randn(n, 4, generator=g), torch.randn(n, 4, generator=g)
    first = torch.rand(n, generator=g) < torch.sigmoid((a - b) @ TRUE)
    return torch.where(first[:, None], a - b, b - a)


def task(delta):
    return torch.stack([torch.zeros(H), torch.tensor(delta, dtype=torch.float32)])


def test_bald_is_low_on_a_near_tie_the_entropy_ranks_first_and_high_where_no_label_has_looked():
    heads = bootstrap_heads(labelled_diffs(), torch.full((H,), 0.5), k=8, seed=0)
    near_tie = task([0.01, 0, 0, 0, 0, 0, 0, 0])
    explored = task([0.5, 0.5, 0, 0, 0, 0, 0, 0])
    unexplored = task([0, 0, 0, 0, 1.0, 0, 0, 0])
    bald = {name: pairwise_bald(t, heads) for name, t in
            [("near tie", near_tie), ("explored", explored), ("unexplored", unexplored)]}
    entropy = {name: pairwise_entropy((t @ heads.mean(0)).tolist()) for name, t in
               [("near tie", near_tie), ("explored", explored), ("unexplored", unexplored)]}
    assert entropy["near tie"] == pytest.approx(math.log(2), abs=1e-4)  # the entropy's first pick
    assert max(entropy, key=entropy.get) == "near tie"
    assert bald["near tie"] < 1e-4 < bald["explored"] < bald["unexplored"]
    assert bald["unexplored"] > 10 * bald["explored"]
    assert ensemble_scores([near_tie, explored, unexplored], labelled_diffs(), torch.full((H,), 0.5), seed=0) == \
        pytest.approx([bald["near tie"], bald["explored"], bald["unexplored"]], abs=1e-6)


def test_heads_agree_where_the_labels_pin_the_weight_down_and_keep_their_spread_elsewhere():
    heads = bootstrap_heads(labelled_diffs(n=2000), torch.full((H,), 0.5), k=16, seed=1)
    spread = heads.std(dim=0)
    assert spread[:4].max() < 0.5 * spread[4:].min()  # data directions vs directions no pair moves along
    assert spread[4:].mean() == pytest.approx(0.5, rel=0.4)  # the prior's scale: the trained head's rms weight
    assert torch.allclose(heads.mean(dim=0)[:4], TRUE[:4], atol=0.5)  # the oracle's weight, recovered
    assert torch.equal(heads, bootstrap_heads(labelled_diffs(n=2000), torch.full((H,), 0.5), k=16, seed=1))


def test_pairwise_bald_edge_cases():
    heads = torch.randn(4, H)
    assert pairwise_bald(torch.randn(1, H), heads) == 0.0  # one answer: no pair
    same = torch.ones(4, H)
    assert pairwise_bald(torch.randn(3, H), same) == pytest.approx(0.0, abs=1e-6)  # heads that all agree
    assert 0.0 <= pairwise_bald(torch.randn(4, H), heads) <= math.log(2)


@pytest.mark.parametrize("args, message", [
    ((torch.zeros(0, H), torch.ones(H)), "at least one labelled pair"),
    ((torch.ones(3, H), torch.ones(H + 1)), "the prior head has shape"),
    ((torch.ones(3, H), torch.zeros(H)), "the prior's scale must be positive"),
])
def test_bootstrap_heads_refuses_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_heads(*args)
    with pytest.raises(ValueError, match="k >= 2"):
        bootstrap_heads(torch.ones(3, H), torch.ones(H), k=1)
    with pytest.raises(ValueError, match="groups has 2 ids for 3 pairs"):
        bootstrap_heads(torch.ones(3, H), torch.ones(H), groups=[0, 0])


def test_groups_resample_whole_rankings():
    """One group holding every pair: each resample draws that group, i.e. all the pairs, so the heads differ
    only by their random prior offsets, and they still agree along the labelled directions."""
    diffs = labelled_diffs(n=600)
    heads = bootstrap_heads(diffs, torch.full((H,), 0.5), k=8, seed=2, groups=[0] * 600)
    assert heads.std(dim=0)[:4].max() < 0.5 * heads.std(dim=0)[4:].min()
    six = [i // 6 for i in range(600)]  # rankings of 6 pairs
    assert not torch.equal(bootstrap_heads(diffs, torch.full((H,), 0.5), k=8, seed=2, groups=six), heads)


def test_score_features_are_what_the_head_reads(tiny_dir, tiny_tokenizer):
    """rewards = features @ head + bias for every item, whatever its length in the padded batch."""
    from rlhf.models import load_reward_model
    from rlhf.reward import conversation, score

    model = load_reward_model(tiny_dir, device="cpu", dtype=torch.float32)
    items = [conversation("Q?", text) for text in ["a", "a much longer answer " * 6, "mid length answer", "b"]]
    rewards, features = score(model, tiny_tokenizer, items, batch_size=3, features=True)
    assert features.shape == (4, model.config.hidden_size)
    bias = model.score.bias if model.score.bias is not None else torch.zeros(1)
    assert torch.allclose(features @ head_weight(model) + bias.detach(), rewards, atol=1e-5)
    assert torch.equal(rewards, score(model, tiny_tokenizer, items, batch_size=3))  # unchanged without features
    assert not model.score._forward_hooks  # the hook is gone


def test_score_features_follow_the_pooled_token_when_pad_is_eos(tiny_dir):
    """With pad = EOS a plain text ends in a pad-valued token; the classifier pools the token before it, and
    so must the features."""
    from rlhf.models import load_reward_model, load_tokenizer
    from rlhf.reward import encode_for_reward, score

    tokenizer = load_tokenizer(tiny_dir)
    tokenizer.pad_token = tokenizer.eos_token
    model = load_reward_model(tiny_dir, device="cpu", dtype=torch.float32)
    items = ["a short text", "a somewhat longer plain text to score", "x"]
    assert all(encode_for_reward(tokenizer, it)[-1] == tokenizer.pad_token_id for it in items)
    rewards, features = score(model, tokenizer, items, batch_size=3, features=True)
    bias = model.score.bias if model.score.bias is not None else torch.zeros(1)
    assert torch.allclose(features @ head_weight(model) + bias.detach(), rewards, atol=1e-5)


def test_the_probe_recovers_the_labelled_direction_and_is_unsure_only_where_it_cannot_tell():
    from rlhf.active import probe_head, probe_scores

    head = probe_head(labelled_diffs(), l2=1.0)
    assert torch.nn.functional.cosine_similarity(head, TRUE, dim=0) > 0.9
    assert head[4:].abs().max() < 1e-3  # no label ever differed there: the penalty keeps it at zero
    clear, near_tie, unexplored = task([2.0, 0, 0, 0, 0, 0, 0, 0]), task([0.01, 0, 0, 0, 0, 0, 0, 0]), task([0, 0, 0, 0, 1.0, 0, 0, 0])
    scores = probe_scores([clear, near_tie, unexplored], labelled_diffs(), l2=1.0)
    assert scores[0] < 0.2 < math.log(2) - 1e-3 < scores[1] <= math.log(2) + 1e-9
    assert scores[2] == pytest.approx(math.log(2), abs=1e-3)  # a direction no label explored: a coin flip
    more = probe_scores([clear], labelled_diffs(n=4000), l2=1.0)[0]
    assert more < scores[0]  # more labels along the direction: surer


def test_the_probe_refuses_what_it_cannot_fit():
    from rlhf.active import probe_head, probe_scores

    with pytest.raises(ValueError, match="at least one labelled pair"):
        probe_head(torch.zeros(0, H))
    with pytest.raises(ValueError, match="l2 must be positive"):
        probe_head(labelled_diffs(), l2=0)
    assert probe_scores([], labelled_diffs()) == []
    assert probe_scores([torch.zeros(1, H)], labelled_diffs()) == [0.0]  # one answer: nothing to order
