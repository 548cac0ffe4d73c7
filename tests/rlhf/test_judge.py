"""AI feedback in rlhf: orders from scores, the judge's position-bias-cancelled verdicts (tiny model)."""
import pytest
import torch

from rlhf.judge import judge_order, order_from_scores, preference_matrix, reward_order


def test_order_from_scores_ties_equal_scores():
    assert order_from_scores([7, 3, 9, 4], [0.1, 2.0, 2.0, -1.0]) == [[3, 9], [7], [4]]
    assert order_from_scores([1, 2], [0.5, 0.5000001]) == [[1, 2]]


def test_judge_matrix_is_consistent_and_cancels_position(tiny_dir, tiny_tokenizer):
    from rlhf.models import load_causal_lm

    model = load_causal_lm(tiny_dir, device="cpu", dtype=torch.float32)
    texts = ["Paris is the capital.", "It is Lyon.", "Bananas."]
    m = preference_matrix(model, tiny_tokenizer, "What is the capital of France?", texts)
    for i in range(3):
        assert m[i][i] == 0.5
        for j in range(3):
            assert m[i][j] + m[j][i] == pytest.approx(1.0, abs=1e-6)
    order, shares = judge_order(model, tiny_tokenizer, "What is the capital of France?", [10, 11, 12], texts)
    assert sorted(c for g in order for c in g) == [10, 11, 12] and set(shares) == {10, 11, 12}
    assert shares[order[0][0]] >= shares[order[-1][0]]


def test_a_judge_that_always_says_a_prefers_nothing(tiny_dir, tiny_tokenizer):
    """Pure position bias: P(A) = 1 whatever is shown. Asking both orders cancels it: every pair 0.5."""
    from rlhf.judge import _letter_ids

    a_id, _ = _letter_ids(tiny_tokenizer)

    class AlwaysA(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask=None, position_ids=None):
            logits = torch.zeros(*input_ids.shape, len(tiny_tokenizer))
            logits[..., a_id] = 50.0

            class Out:
                pass

            out = Out()
            out.logits = logits
            return out

    m = preference_matrix(AlwaysA(), tiny_tokenizer, "Q?", ["x", "y", "z"])
    assert all(v == pytest.approx(0.5) for row in m for v in row)


def test_reward_order_follows_the_scores(tiny_dir, tiny_tokenizer):
    from rlhf.models import load_reward_model

    model = load_reward_model(tiny_dir, device="cpu", dtype=torch.float32)
    order, rewards = reward_order(model, tiny_tokenizer, "Q?", [1, 2, 3], ["a", "bb", "ccc"])
    assert order == order_from_scores([1, 2, 3], [rewards[1], rewards[2], rewards[3]])
