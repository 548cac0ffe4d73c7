"""Data formats: exact pair expansion, converters on the real files in ../shared/data, round trips."""

import gzip
import json

import pytest

from rlhf import data as D


def test_ranking_with_ties_expands_to_exact_pairs():
    # ranks: a=0 (best), b=1, c=1 (tie with b), d=2; scores 1-7
    r = D.Ranking("q?", ["a", "b", "c", "d"], [0, 1, 1, 2], scores=[7, 4, 4, 1])
    pairs = D.ranking_to_pairs(r, margin_scale=0.5)
    got = {(p.chosen, p.rejected, p.margin) for p in pairs}
    assert got == {("a", "b", 1.5), ("a", "c", 1.5), ("a", "d", 3.0), ("b", "d", 1.5), ("c", "d", 1.5)}
    assert len(pairs) == 6 - 1  # C(4,2) minus the one tie
    assert all(p.prompt == [{"role": "user", "content": "q?"}] for p in pairs)


def test_ranking_order_does_not_matter_and_no_margin_without_scale():
    r = D.Ranking("q", ["worst", "best", "mid"], [2, 0, 1])
    pairs = D.ranking_to_pairs(r)
    assert {(p.chosen, p.rejected) for p in pairs} == {("best", "worst"), ("best", "mid"), ("mid", "worst")}
    assert all(p.margin is None for p in pairs)
    assert D.ranking_to_pairs(D.Ranking("q", ["x", "y", "z"], [0, 0, 0])) == []


def test_pairs_dataset_is_trl_conversational_and_round_trips():
    pairs = [D.PreferencePair("hi", "good", "bad", 1.0), D.PreferencePair([{"role": "user", "content": "yo"}], "a", "b", 0.5)]
    ds = D.pairs_to_dataset(pairs)
    assert set(ds.column_names) == {"prompt", "chosen", "rejected", "margin"}
    assert ds[0]["chosen"] == [{"role": "assistant", "content": "good"}]
    back = D.dataset_to_pairs(ds)
    assert [(p.prompt, p.chosen, p.rejected, p.margin) for p in back] == [(p.prompt, p.chosen, p.rejected, p.margin) for p in pairs]
    assert "margin" not in D.pairs_to_dataset([D.PreferencePair("q", "a", "b")]).column_names


def test_hh_rlhf_real_files_parse_and_round_trip(shared_data):
    for name, n, broken in [("helpful-base", 2354, 15), ("harmless-base", 2312, 9)]:
        path = shared_data / "hh_rlhf_test_splits" / f"{name}.test.jsonl.gz"
        records = [json.loads(line) for line in gzip.open(path, "rt")]
        kept = []
        for rec in records:
            try:
                kept.append((rec, D.hh_record_to_pair(rec)))
            except D.RecordError as exc:  # different earlier turns, an empty reply, a prompt ending with the assistant
                assert exc.field in ("chosen", "rejected") and exc.reason
        pairs = D.read_hh_rlhf(path)
        assert len(records) == n and len(pairs) == len(kept) == n - broken  # the broken ones are skipped
        for (rec, pair), read in zip(kept, pairs):
            assert read == pair and pair.prompt[0]["role"] == "user" and pair.prompt[-1]["role"] == "user"
            assert "\n\nHuman:" not in pair.chosen and "\n\nAssistant:" not in pair.rejected
            assert D.pair_to_hh_record(pair) == rec  # nothing lost: the record comes back byte for byte


def test_hh_transcript_messages():
    msgs = D.hh_to_messages("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and?\n\nAssistant: bye")
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert msgs[1]["content"] == "hello"
    with pytest.raises(ValueError):
        D.hh_to_messages("Human: no leading blank line")


def test_oasst_ranked_siblings_become_rankings(shared_data):
    rankings = D.read_oasst_rankings(shared_data / "oasst2_animal_topic_subset" / "oasst2_filtered.jsonl.gz")
    assert len(rankings) > 100
    for r in rankings:
        assert len(r.completions) >= 2 and sorted(r.ranks) == list(range(len(r.ranks)))  # OASST ranks: no ties
        assert r.prompt[-1]["role"] == "user"
        assert all(a["role"] != b["role"] for a, b in zip(r.prompt, r.prompt[1:]))  # alternating turns
    pairs = D.rankings_to_pairs(rankings)
    k = [len(r.completions) for r in rankings]
    assert len(pairs) == sum(n * (n - 1) // 2 for n in k)
    assert {r.meta["lang"] for r in D.read_oasst_rankings(
        shared_data / "oasst2_animal_topic_subset" / "oasst2_filtered.jsonl.gz", langs={"en"})} == {"en"}


def test_finegrained_preferences_become_rankings(shared_data):
    path = shared_data / "qa_feedback_finegrained" / "dev_feedback.json.gz"
    records = json.load(gzip.open(path, "rt"))
    rankings = D.read_finegrained_rankings(path)
    assert len(rankings) == len(records) == 500
    for rec, r in zip(records, rankings):
        assert r.completions == [rec[f"prediction {i}"] for i in range(1, 5)]
        assert rec["question"] in r.prompt[0]["content"]
        if r.meta["consistent"]:  # the ranking reproduces every stated preference exactly
            prefs = {}
            for p in D.ranking_to_pairs(r):
                prefs[(p.meta["chosen_index"], p.meta["rejected_index"])] = 1
            for (a, b), pref in zip(D.FG_PAIRS, rec["preference"]):
                assert ((a, b) in prefs) == (pref == 1) and ((b, a) in prefs) == (pref == 2)
    assert sum(r.meta["consistent"] for r in rankings) > 400


def test_demonstration_readers_and_dataset_round_trip(shared_data, tmp_path):
    base = shared_data / "dolly_no_robots_animal_topic_subsets"
    dolly = D.read_dolly(base / "dolly15k_subset.csv")
    robots = D.read_no_robots(base / "no_robots_subset.csv")
    seeds = D.read_self_instruct(shared_data / "self_instruct_seed_tasks" / "seed_tasks.jsonl")
    assert (len(dolly), len(robots)) == (121, 320) and len(seeds) >= 175
    assert all(d.response and d.prompt[-1]["role"] == "user" for d in dolly + robots + seeds)
    ds = D.demonstrations_to_dataset(robots)
    assert set(ds.column_names) == {"prompt", "completion"}
    back = D.dataset_to_demonstrations(ds)
    assert [(d.prompt, d.response) for d in back] == [(d.prompt, d.response) for d in robots]
    D.save_jsonl(robots, tmp_path / "demos.jsonl")
    assert D.load_demonstrations(tmp_path / "demos.jsonl") == robots


def test_rankings_jsonl_round_trip_and_loaders(tmp_path, shared_data):
    rankings = D.read_finegrained_rankings(shared_data / "qa_feedback_finegrained" / "dev_feedback.json.gz")[:20]
    D.save_jsonl(rankings, tmp_path / "r.jsonl")
    assert D.load_jsonl(tmp_path / "r.jsonl", D.Ranking) == rankings
    assert D.load_pairs(tmp_path / "r.jsonl", "rankings") == D.rankings_to_pairs(rankings)
    prompts = D.load_prompts(shared_data / "mt_bench_questions" / "question.jsonl")
    assert len(prompts) == 80 and prompts[0][0]["role"] == "user"
    with pytest.raises(ValueError):
        D.load_pairs(tmp_path / "r.jsonl", "nope")
