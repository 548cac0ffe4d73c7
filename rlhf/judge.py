"""AI feedback: a model ranks a task's responses, as an extra annotator kept apart from people.

Two annotators:

* the **reward model**: each response's reward (``rlhf.reward.score``), best first;
* a **judge prompt** run by a local causal LM: for every ordered pair of responses (i, j) the model is
  asked which of "Response A" (i) and "Response B" (j) answers the request better, and the probability it
  gives the next token "A" rather than "B" is read off the logits. Each pair is asked in both orders and
  the two readings are averaged, P(i better) = ½ (P(A | i shown first) + P(B | i shown second)), which
  cancels a model's preference for a position (judges are known to favour the first answer). Responses
  are ordered by their expected wins Σⱼ P(i better than j) (a Borda count), equal counts tied.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .data import Messages, as_messages

JUDGE_TEMPLATE = (
    "Which response answers the request better? Consider helpfulness, truthfulness and harmlessness.\n\n"
    "Request:\n{request}\n\nResponse A:\n{a}\n\nResponse B:\n{b}\n\n"
    "Answer with one letter: A or B."
)


def order_from_scores(ids: Sequence[int], scores: Sequence[float], tolerance: float = 1e-6) -> list[list[int]]:
    """Tie groups of `ids`, best (highest score) first; scores within `tolerance` of the group's first tie."""
    ranked = sorted(zip(scores, ids), key=lambda x: -x[0])
    groups: list[list[int]] = []
    top = None
    for score, cid in ranked:
        if groups and abs(score - top) <= tolerance:
            groups[-1].append(cid)
        else:
            groups.append([cid])
            top = score
    return [sorted(g) for g in groups]


def _request_text(prompt: str | Messages) -> str:
    turns = as_messages(prompt)
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n".join(f"{t['role']}: {t['content']}" for t in turns)


def _letter_ids(tokenizer) -> tuple[int, int]:
    a = tokenizer.encode("A", add_special_tokens=False)
    b = tokenizer.encode("B", add_special_tokens=False)
    if not a or not b or a[-1] == b[-1]:
        raise ValueError("the judge's tokenizer does not tell the letters A and B apart")
    return a[-1], b[-1]


@torch.no_grad()
def preference_matrix(model, tokenizer, prompt: str | Messages, texts: Sequence[str],
                      batch_size: int = 8) -> list[list[float]]:
    """M[i][j] = P(response i is better than response j), position bias cancelled (module docstring);
    M[i][i] = 0.5 and M[i][j] + M[j][i] = 1."""
    device = next(model.parameters()).device
    a_id, b_id = _letter_ids(tokenizer)
    request = _request_text(prompt)
    pairs = [(i, j) for i in range(len(texts)) for j in range(len(texts)) if i != j]
    encoded = [
        tokenizer.apply_chat_template([{"role": "user", "content": JUDGE_TEMPLATE.format(request=request, a=texts[i],
                                                                                      b=texts[j])}],
                                      add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        for i, j in pairs
    ]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    first = {}  # (i, j) -> P("A") with i shown as A
    was_training = model.training
    model.eval()
    for start in range(0, len(pairs), batch_size):
        chunk = encoded[start:start + batch_size]
        width = max(len(x) for x in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)  # left padding: the last token is real
        mask = torch.zeros_like(ids)
        for row, x in enumerate(chunk):
            ids[row, width - len(x):] = torch.tensor(x)
            mask[row, width - len(x):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens count from 0
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                       position_ids=positions.to(device)).logits[:, -1, :]  # (b, V)
        two = torch.stack([logits[:, a_id], logits[:, b_id]], dim=-1).float().softmax(-1)[:, 0]  # P(A)
        for k, p in enumerate(two.tolist()):
            first[pairs[start + k]] = p
    model.train(was_training)
    n = len(texts)
    return [[0.5 if i == j else 0.5 * (first[(i, j)] + 1 - first[(j, i)]) for j in range(n)] for i in range(n)]


def judge_order(model, tokenizer, prompt: str | Messages, ids: Sequence[int], texts: Sequence[str],
                batch_size: int = 8) -> tuple[list[list[int]], dict[int, float]]:
    """(tie groups best first, each response's expected win share) from the judge's pairwise verdicts."""
    matrix = preference_matrix(model, tokenizer, prompt, texts, batch_size)
    n = len(texts)
    share = [sum(row[j] for j in range(n) if j != i) / max(n - 1, 1) for i, row in enumerate(matrix)]
    return order_from_scores(ids, share), {cid: round(s, 6) for cid, s in zip(ids, share)}


@torch.no_grad()
def reward_order(model, tokenizer, prompt: str | Messages, ids: Sequence[int],
                 texts: Sequence[str]) -> tuple[list[list[int]], dict[int, float]]:
    """(tie groups best first, each response's reward) under a reward model."""
    from .reward import conversation, score

    rewards = score(model, tokenizer, [conversation(prompt, t) for t in texts]).tolist()
    return order_from_scores(ids, rewards), {cid: round(r, 6) for cid, r in zip(ids, rewards)}


def pairwise_entropy(rewards: Sequence[float]) -> float:
    """The reward model's uncertainty about one task's order: the mean over the task's response pairs (i, j)
    of the binary entropy, in nats, of its Bradley-Terry probability p = sigmoid(r_i - r_j) (0 when every
    pair is certain, ln 2 when every pair is a coin flip). Active learning serves the highest first: the
    reward model's loss on a pair is -log sigmoid(+-d), whose gradient in d has magnitude |y - p|; its
    expectation under the model's own belief, 2p(1 - p), grows and falls with this entropy, so the most
    uncertain tasks are the ones whose labels are expected to move the model most."""
    import math

    rewards = [float(r) for r in rewards]
    pairs = [(a, b) for i, a in enumerate(rewards) for b in rewards[i + 1:]]
    if not pairs:
        return 0.0
    total = 0.0
    for a, b in pairs:
        p = 1.0 / (1.0 + math.exp(-(a - b))) if a - b > -700 else 0.0
        p = min(max(p, 1e-12), 1 - 1e-12)
        total -= p * math.log(p) + (1 - p) * math.log(1 - p)
    return total / len(pairs)
