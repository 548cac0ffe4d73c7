"""Data formats: small dataclasses, converters to TRL's ``datasets.Dataset`` formats, and readers.

Every prompt is a conversation: a list of ``{"role": "system"|"user"|"assistant", "content": str}``
ending with a user turn (a plain string is wrapped as one user message by ``as_messages``).

* ``Demonstration(prompt, response)`` -> TRL conversational prompt/completion rows (completion-only loss).
* ``Ranking(prompt, completions, ranks, scores)`` - ranks are 0 = best; equal ranks are ties.
  ``ranking_to_pairs`` expands it into C(K,2) minus tied pairs; with ``margin_scale`` the 1-7 scores
  give ``margin = margin_scale * (score_chosen - score_rejected)`` (TRL RewardTrainer's ``margin``).
* ``PreferencePair(prompt, chosen, rejected, margin)`` -> TRL conversational preference rows
  (``prompt``, ``chosen``, ``rejected`` [, ``margin``]) used by RewardTrainer and DPOTrainer.

Readers for the formats in ``../shared/data``: HH-RLHF transcripts, OASST ranked sibling replies,
FineGrainedRLHF 4-way preferences, Dolly / no_robots / Self-Instruct demonstrations.

This module is the one owner of the HH-RLHF, OASST and FineGrainedRLHF formats: the record-level
functions (``hh_record_to_pair``, ``oasst_tree_rankings``, ``finegrained_to_ranking``) decide what a
record means and which records are broken (``RecordError``, naming the field). The readers skip
broken records; the studio's label import (``labelapp.formats.labels``) calls the same functions and
names them, so a model trained from the CLI and one trained in the studio see the same prompts and
answers. Texts are kept as they are in the file (only the single space after ``Human:`` /
``Assistant:`` belongs to the HH syntax). Importing this module never imports torch.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import gzip
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

Messages = list[dict[str, str]]


class RecordError(ValueError):
    """A record that its format's rules refuse; ``field`` names where (None: the whole record)."""

    def __init__(self, field: str | None, reason: str):
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field, self.reason = field, reason


def as_messages(prompt: str | Messages) -> Messages:
    """A prompt as a conversation (a plain string becomes one user turn)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


@dataclass
class Demonstration:
    prompt: Messages
    response: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.prompt = as_messages(self.prompt)


@dataclass
class Ranking:
    prompt: Messages
    completions: list[str]
    ranks: list[int]  # 0 = best; equal values are ties
    scores: list[float] | None = None  # optional 1-7 quality scores, one per completion
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.prompt = as_messages(self.prompt)
        if len(self.ranks) != len(self.completions):
            raise ValueError("one rank per completion")
        if self.scores is not None and len(self.scores) != len(self.completions):
            raise ValueError("one score per completion")


@dataclass
class PreferencePair:
    """One preference: `chosen` over `rejected` for `prompt`. `weight` scales the pair's term in the
    reward-model and DPO losses when a run sets ``label_weights`` (1 = full, 0 = no effect);
    `confidence` is the probability that the order is right (the studio's reliability model), used as
    a soft label and by ``min_confidence`` (rlhf.weighting)."""

    prompt: Messages
    chosen: str
    rejected: str
    margin: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    weight: float = field(default=1.0, metadata={"hash_if_set": True})
    confidence: float | None = field(default=None, metadata={"hash_if_set": True})

    def __post_init__(self):
        self.prompt = as_messages(self.prompt)


def to_dict(record) -> dict[str, Any]:
    return dataclasses.asdict(record)


def from_dict(cls, d: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


# ------------------------------------------------------------------------------------------- conversions
def ranking_to_pairs(ranking: Ranking, margin_scale: float | None = None) -> list[PreferencePair]:
    """All C(K,2) pairs of a ranking minus ties, better completion as ``chosen``."""
    pairs = []
    for i, j in itertools.combinations(range(len(ranking.completions)), 2):
        if ranking.ranks[i] == ranking.ranks[j]:
            continue
        best, worst = (i, j) if ranking.ranks[i] < ranking.ranks[j] else (j, i)
        margin = None
        if margin_scale is not None and ranking.scores is not None:
            margin = margin_scale * (float(ranking.scores[best]) - float(ranking.scores[worst]))
        meta = dict(ranking.meta, chosen_index=best, rejected_index=worst)
        pairs.append(PreferencePair(ranking.prompt, ranking.completions[best], ranking.completions[worst], margin, meta))
    return pairs


def rankings_to_pairs(rankings: Iterable[Ranking], margin_scale: float | None = None) -> list[PreferencePair]:
    return [p for r in rankings for p in ranking_to_pairs(r, margin_scale)]


def _assistant(text: str) -> Messages:
    return [{"role": "assistant", "content": text}]


def demonstrations_to_dataset(demos: Iterable[Demonstration]):
    """TRL conversational prompt/completion: ``{"prompt": [...], "completion": [{"role": "assistant", ...}]}``."""
    from datasets import Dataset

    rows = [{"prompt": d.prompt, "completion": _assistant(d.response)} for d in demos]
    return Dataset.from_list(rows)


def dataset_to_demonstrations(ds) -> list[Demonstration]:
    return [Demonstration(r["prompt"], r["completion"][-1]["content"]) for r in ds]


def pairs_to_dataset(pairs: Iterable[PreferencePair]):
    """TRL conversational preference rows; ``margin`` only when every pair has one."""
    from datasets import Dataset

    pairs = list(pairs)
    with_margin = bool(pairs) and all(p.margin is not None for p in pairs)
    rows = []
    for p in pairs:
        row = {"prompt": p.prompt, "chosen": _assistant(p.chosen), "rejected": _assistant(p.rejected)}
        if with_margin:
            row["margin"] = float(p.margin)
        rows.append(row)
    return Dataset.from_list(rows)


def dataset_to_pairs(ds) -> list[PreferencePair]:
    return [PreferencePair(r["prompt"], r["chosen"][-1]["content"], r["rejected"][-1]["content"], r.get("margin"))
            for r in ds]


# ---------------------------------------------------------------------------------------------- HH-RLHF
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}
_HH_NAME = {v: k for k, v in _HH_ROLE.items()}


def hh_to_messages(transcript: str) -> Messages:
    """``'\\n\\nHuman: hi\\n\\nAssistant: hello'`` -> ``[{"role": "user", ...}, {"role": "assistant", ...}]``.

    The one space after ``Human:`` / ``Assistant:`` is the format's; everything else is content."""
    parts = _HH_TURN.split(transcript)
    if parts[0].strip() or len(parts) < 3:
        raise RecordError(None, "an HH transcript starts with '\\n\\nHuman:'")
    messages = []
    for name, text in zip(parts[1::2], parts[2::2]):
        messages.append({"role": _HH_ROLE[name], "content": text[1:] if text.startswith(" ") else text})
    return messages


def messages_to_hh(messages: Messages) -> str:
    """Inverse of ``hh_to_messages`` (system turns are not part of the HH format)."""
    return "".join(f"\n\n{_HH_NAME[m['role']]}: {m['content']}" for m in messages)


def _hh_side(record: dict, name: str) -> Messages:
    transcript = record.get(name)
    if not isinstance(transcript, str):
        raise RecordError(name, "must be a transcript string")
    try:
        messages = hh_to_messages(transcript)
    except RecordError as exc:
        raise RecordError(name, "must start with '\\n\\nHuman:'") from exc
    if messages[-1]["role"] != "assistant":
        raise RecordError(name, "has no '\\n\\nAssistant:' turn at the end")
    if not messages[-1]["content"].strip():
        raise RecordError(name, "empty completion")
    return messages


def hh_record_to_pair(record: dict) -> PreferencePair:
    """``{"chosen": transcript, "rejected": transcript}`` -> pair. The prompt is the turns before the
    last Assistant turn, which both transcripts must share, starting with the Human and ending with
    the Human's turn; the two replies must be non-empty and different (``RecordError`` otherwise)."""
    if not isinstance(record, dict):
        raise RecordError(None, "each record must be a JSON object")
    chosen, rejected = _hh_side(record, "chosen"), _hh_side(record, "rejected")
    if chosen[:-1] != rejected[:-1]:
        raise RecordError("rejected", "chosen and rejected do not share the same prompt (the turns before the last Assistant turn)")
    prompt = chosen[:-1]
    if not prompt or prompt[0]["role"] != "user" or prompt[-1]["role"] != "user":
        raise RecordError("chosen", "the prompt must start and end with a Human turn")
    if not prompt[-1]["content"].strip():
        raise RecordError("chosen", "the Human's last turn is empty")
    if chosen[-1]["content"] == rejected[-1]["content"]:
        raise RecordError("rejected", "chosen and rejected give the same reply")
    return PreferencePair(prompt, chosen[-1]["content"], rejected[-1]["content"], meta={"source": "hh-rlhf"})


def pair_to_hh_record(pair: PreferencePair) -> dict[str, str]:
    return {"chosen": messages_to_hh(pair.prompt + _assistant(pair.chosen)),
            "rejected": messages_to_hh(pair.prompt + _assistant(pair.rejected))}


def read_hh_rlhf(path: str | os.PathLike, limit: int | None = None) -> list[PreferencePair]:
    """Read an HH-RLHF ``*.jsonl[.gz]`` file; records the format refuses (``hh_record_to_pair``) are skipped."""
    pairs = []
    for record in _jsonl(path):
        try:
            pairs.append(hh_record_to_pair(record))
        except RecordError:
            continue
        if limit is not None and len(pairs) >= limit:
            break
    return pairs


# ------------------------------------------------------------------------------------------------- OASST
def oasst_tree_rankings(tree: dict) -> Iterator[Ranking]:
    """One OASST message tree (``{"prompt": root message, …}``) -> one ``Ranking`` per prompter message
    with >= 2 ranked, non-deleted assistant replies, in the tree's order; the prompt is the
    conversation down to that message. Deleted messages are left out with their replies."""
    root = tree.get("prompt") if isinstance(tree, dict) else None
    if not isinstance(root, dict):
        raise RecordError("prompt", "must be the tree's root message")
    yield from _oasst_walk(root, [], "prompt")


def _oasst_walk(node, history: Messages, where: str) -> Iterator[Ranking]:
    if not isinstance(node, dict) or node.get("role") not in ("prompter", "assistant"):
        raise RecordError(where, "each message needs role 'prompter' or 'assistant'")
    if node.get("deleted"):
        return
    if not isinstance(node.get("text"), str):
        raise RecordError(f"{where}.text", "must be a string")
    role = "user" if node["role"] == "prompter" else "assistant"
    conv = history + [{"role": role, "content": node["text"]}]
    replies = node.get("replies") or []
    if not isinstance(replies, list):
        raise RecordError(f"{where}.replies", "must be a list of messages")
    ranked = [r for r in replies if isinstance(r, dict) and r.get("role") == "assistant" and r.get("rank") is not None
              and not r.get("deleted")]
    if role == "user" and len(ranked) >= 2:
        parent = node.get("message_id")
        if not all(isinstance(r["rank"], int) and not isinstance(r["rank"], bool) for r in ranked):
            raise RecordError("rank", f"ranks under message {parent} must be whole numbers")
        if not all(isinstance(r.get("text"), str) for r in ranked):
            raise RecordError(f"{where}.replies.text", "must be a string")
        yield Ranking(conv, [r["text"] for r in ranked], [r["rank"] for r in ranked],
                      meta={"source": "oasst", "parent_id": parent, "lang": node.get("lang"),
                            "message_ids": [r.get("message_id") for r in ranked],
                            "models": [r.get("model_name") or "" for r in ranked]})
    for i, reply in enumerate(replies):
        yield from _oasst_walk(reply, conv, f"{where}.replies[{i}]")


def read_oasst_rankings(path: str | os.PathLike, langs: set[str] | None = None) -> list[Ranking]:
    """OASST message trees -> one ``Ranking`` per prompter turn with >= 2 ranked assistant replies
    (``oasst_tree_rankings``); trees the format refuses are skipped."""
    out = []
    for tree in _jsonl(path):
        try:
            rankings = list(oasst_tree_rankings(tree))
        except RecordError:
            continue
        out.extend(r for r in rankings if langs is None or r.meta.get("lang") in langs)
    return out


# ---------------------------------------------------------------------------------------- FineGrainedRLHF
FG_PAIRS = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]  # order of the 6 `preference` entries


def finegrained_prompt(record: dict) -> str:
    """The question and its passages (``title: sentence sentence …``) as one user prompt."""
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise RecordError("question", "must be a non-empty string")
    passages = record.get("passages") or []
    if not isinstance(passages, list) or not all(
        isinstance(p, list) and p and all(isinstance(x, str) for x in p) for p in passages
    ):
        raise RecordError("passages", "must be a list of [title, sentence, …] lists")
    text = "\n\n".join(f"{p[0]}: {' '.join(p[1:])}" if len(p) > 1 else p[0] for p in passages)
    return f"Answer the question using the passages.\n\nQuestion: {question}\n\nPassages:\n{text}"


def copeland_ranks(preference: list[int], k: int = 4) -> list[int]:
    """Ranks (0 = best, equal = tie) from pairwise judgements over (0v1, 0v2, …): 1 = first wins,
    2 = second wins, 0 = no preference. Each item scores wins minus losses (Copeland)."""
    score = [0] * k
    for (a, b), pref in zip(itertools.combinations(range(k), 2), preference):
        if pref == 1:
            score[a], score[b] = score[a] + 1, score[b] - 1
        elif pref == 2:
            score[a], score[b] = score[a] - 1, score[b] + 1
    order = sorted(set(score), reverse=True)
    return [order.index(s) for s in score]


def finegrained_to_ranking(record: dict) -> Ranking:
    """4 predictions + 6 pairwise preferences (1: first better, 2: second better, 0: none) -> ``Ranking``.

    Ranks come from Copeland scores (wins - losses; equal scores are ties). ``meta["consistent"]`` says
    whether the ranking reproduces every stated preference (it does not for intransitive annotations).
    """
    if not isinstance(record, dict):
        raise RecordError(None, "each record must be a JSON object")
    prompt = finegrained_prompt(record)
    preds = []
    for i in range(1, 5):
        pred = record.get(f"prediction {i}")
        if not isinstance(pred, str) or not pred.strip():
            raise RecordError(f"prediction {i}", "must be a non-empty string")
        preds.append(pred)
    if len(set(preds)) != 4:
        raise RecordError("prediction 4", "two predictions have the same text")
    preference = record.get("preference")
    if not isinstance(preference, list) or len(preference) != 6 or any(
        p not in (0, 1, 2) or isinstance(p, bool) for p in preference
    ):
        raise RecordError("preference", "must be 6 judgements (1v2, 1v3, 1v4, 2v3, 2v4, 3v4), each 0, 1 or 2")
    ranks = copeland_ranks(preference)
    consistent = all((pref == 0 and ranks[a] == ranks[b]) or (pref == 1 and ranks[a] < ranks[b])
                     or (pref == 2 and ranks[a] > ranks[b]) for (a, b), pref in zip(FG_PAIRS, preference))
    return Ranking(prompt, preds, ranks,
                   meta={"source": "finegrained-rlhf", "preference": list(preference), "consistent": consistent})


def finegrained_reference(record: dict) -> str:
    """The record's gold answer ("" when it has none)."""
    gold = record.get("gold")
    return gold if isinstance(gold, str) else ""


def finegrained_correction(record: dict) -> str | None:
    """The annotator's corrected prediction (a demonstration), or None."""
    feedback = record.get("feedback")
    corrected = feedback.get("corrected-prediction") if isinstance(feedback, dict) else None
    return corrected if isinstance(corrected, str) and corrected.strip() else None


def read_finegrained_rankings(path: str | os.PathLike, consistent_only: bool = False) -> list[Ranking]:
    """A FineGrainedRLHF qa-feedback file (a JSON array, or JSON Lines) -> rankings; records the format
    refuses (``finegrained_to_ranking``) are skipped."""
    with _open(path) as f:
        text = f.read()
    records = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.split("\n") if x.strip()]
    rankings = []
    for record in records:
        try:
            rankings.append(finegrained_to_ranking(record))
        except RecordError:
            continue
    return [r for r in rankings if r.meta["consistent"]] if consistent_only else rankings


# -------------------------------------------------------------------------------------- demonstrations
def read_dolly(path: str | os.PathLike) -> list[Demonstration]:
    """Dolly CSV (instruction, context, response, category); the context is appended to the instruction."""
    out = []
    with _open(path) as f:
        for row in csv.DictReader(f):
            prompt = row["instruction"] + (f"\n\n{row['context']}" if row.get("context") else "")
            out.append(Demonstration(prompt, row["response"], meta={"source": "dolly", "category": row["category"]}))
    return out


def read_no_robots(path: str | os.PathLike) -> list[Demonstration]:
    """no_robots CSV; ``messages`` is a Python-repr list; the last assistant turn is the response."""
    out = []
    with _open(path) as f:
        for row in csv.DictReader(f):
            messages = ast.literal_eval(row["messages"])
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            out.append(Demonstration(messages[:last], messages[last]["content"],
                                     meta={"source": "no_robots", "category": row["category"],
                                           "prompt_id": row["prompt_id"]}))
    return out


def read_self_instruct(path: str | os.PathLike) -> list[Demonstration]:
    """Self-Instruct JSONL: one demonstration per instance (instruction + optional input)."""
    out = []
    for rec in _jsonl(path):
        for inst in rec["instances"]:
            prompt = rec["instruction"] + (f"\n\n{inst['input']}" if inst.get("input") else "")
            out.append(Demonstration(prompt, inst["output"], meta={"source": "self-instruct", "id": rec["id"]}))
    return out


# ------------------------------------------------------------------------------------------------ JSONL io
def _open(path, newline: str | None = None):
    path = str(path)
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline=newline)
    return open(path, encoding="utf-8", newline=newline)


def _jsonl(path) -> Iterator[dict]:
    """The records of a JSON Lines file, split on "\\n" only (U+2028 and U+2029 are legal in JSON strings)."""
    with _open(path, newline="\n") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def save_jsonl(records: Iterable[Any], path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(to_dict(r) if dataclasses.is_dataclass(r) else r, ensure_ascii=False) + "\n")


def load_jsonl(path: str | os.PathLike, cls) -> list:
    return [from_dict(cls, d) for d in _jsonl(path)]


DEMONSTRATION_FORMATS = {
    "jsonl": lambda p: load_jsonl(p, Demonstration),
    "dolly": read_dolly,
    "no_robots": read_no_robots,
    "self_instruct": read_self_instruct,
}
PAIR_FORMATS = {
    "jsonl": lambda p, scale=None: load_jsonl(p, PreferencePair),
    "rankings": lambda p, scale=None: rankings_to_pairs(load_jsonl(p, Ranking), scale),
    "hh_rlhf": lambda p, scale=None: read_hh_rlhf(p),
    "oasst": lambda p, scale=None: rankings_to_pairs(read_oasst_rankings(p)),
    "finegrained": lambda p, scale=None: rankings_to_pairs(read_finegrained_rankings(p, consistent_only=True)),
}


def load_demonstrations(path: str | os.PathLike, fmt: str = "jsonl") -> list[Demonstration]:
    if fmt not in DEMONSTRATION_FORMATS:
        raise ValueError(f"unknown demonstration format {fmt!r}; known: {sorted(DEMONSTRATION_FORMATS)}")
    return DEMONSTRATION_FORMATS[fmt](path)


def load_pairs(path: str | os.PathLike, fmt: str = "jsonl", margin_scale: float | None = None) -> list[PreferencePair]:
    if fmt not in PAIR_FORMATS:
        raise ValueError(f"unknown preference format {fmt!r}; known: {sorted(PAIR_FORMATS)}")
    return PAIR_FORMATS[fmt](path, margin_scale)


def load_prompts(path: str | os.PathLike) -> list[Messages]:
    """Prompts for sampling: JSONL with ``prompt`` (string or messages), ``turns`` (MT-/Vicuna-bench: the
    first turn) or ``instruction``; or a plain text file with one prompt per line."""
    if not str(path).endswith((".jsonl", ".jsonl.gz")):
        with _open(path) as f:
            return [as_messages(line.rstrip("\n")) for line in f if line.strip()]
    out = []
    for rec in _jsonl(path):
        prompt = rec.get("prompt") or (rec.get("turns") or [None])[0] or rec.get("instruction")
        if prompt is None:
            raise ValueError(f"no prompt in record {rec!r:.80}")
        out.append(as_messages(prompt))
    return out
