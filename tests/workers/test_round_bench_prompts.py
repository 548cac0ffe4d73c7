"""The round benchmark's prompt readers (bench/round_cpu.py --prompts-from): what the win-rate is measured on."""
from __future__ import annotations

import csv

import pytest

from labelapp.models import Category
from tests.conftest import load_bench_module


@pytest.fixture(scope="module")
def bench():
    module = load_bench_module("round_cpu")
    if not module.DATA.is_dir():
        pytest.skip(f"shared data folder {module.DATA} not present (set SHARED_DATA_DIR)")
    return module


def test_all_sources_give_distinct_prompts_with_usable_references(bench):
    rows = bench.prompt_rows("all", 10_000)
    texts = [row["text"] for row in rows]
    assert len(texts) == len(set(texts)) >= 400  # a project holds each prompt once
    assert all(row["text"].strip() and len(row["text"]) < 1200 for row in rows)
    assert all(20 < len(row["reference"]) < 600 for row in rows)
    assert {row["category"] for row in rows} <= set(Category.values)
    # every source is in the mix, and a prefix (the training split) sees more than one of them
    dolly, seed = bench.dolly_rows(10_000), bench.seed_task_rows()
    users, robots = bench.user_oriented_rows(), bench.no_robots_rows()
    assert dolly and seed and users and robots
    first = set(texts[:100])
    assert first & {r["text"] for r in dolly} and first & {r["text"] for r in seed + users + robots}


def test_the_order_is_fixed_and_limits_cut_it(bench):
    assert bench.prompt_rows("all", 30) == bench.prompt_rows("all", 10_000)[:30]
    assert len(bench.prompt_rows("dolly", 10)) == 10
    assert bench.prompt_rows("seed", 5) == bench.seed_task_rows()[:5]
    both = bench.prompt_rows("both", 10_000)
    assert len(both) == len(bench.dolly_rows(10_000)) + len(bench.seed_task_rows())


def test_no_robots_rows_have_the_three_fields_and_mapped_categories(bench):
    rows = bench.no_robots_rows()
    assert rows and all(set(row) == {"text", "reference", "category"} for row in rows)
    assert {row["category"] for row in rows} <= set(bench.NO_ROBOTS_CATEGORIES.values()) | {"other"}


def test_no_robots_keeps_single_turn_rows_only(bench, tmp_path, monkeypatch):
    folder = tmp_path / "dolly_no_robots_animal_topic_subsets"
    folder.mkdir()
    answer = "Owls hunt at night and fly almost silently thanks to their soft feathers."
    conversations = {
        "single": [{"role": "user", "content": "How do owls hunt? "}, {"role": "assistant", "content": answer}],
        "multi": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": answer},
                  {"role": "user", "content": "More?"}, {"role": "assistant", "content": answer}],
        "system": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Owls?"},
                   {"role": "assistant", "content": answer}],
        "short": [{"role": "user", "content": "Owls?"}, {"role": "assistant", "content": "Birds."}],
    }
    with open(folder / "no_robots_subset.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["prompt", "messages", "category"])
        writer.writeheader()
        for name, turns in conversations.items():  # the data set stores a Python repr of the list
            writer.writerow({"prompt": name, "messages": repr(turns), "category": "Open QA"})
    monkeypatch.setattr(bench, "DATA", tmp_path)
    assert bench.no_robots_rows() == [{"text": "How do owls hunt?", "reference": answer, "category": "open_qa"}]


@pytest.mark.django_db
def test_round_bench_prints_raw_and_length_controlled_rates_and_lengths(bench, capsys):
    """What the round benchmark reports of its evaluation: both rates per side, the mean lengths, per category."""
    from labelapp.models import ModelVersion, Round
    from labelapp.selectors.stats import evaluation_summary
    from labelapp.services.projects import evaluation_task_create
    from tests.conftest import make_project, make_prompt

    project = make_project()
    rnd = Round.objects.create(project=project, number=1, method="dpo", stage="done", params={})
    new = ModelVersion.objects.create(project=project, name="dpo")
    old = ModelVersion.objects.create(project=project, name="sft")
    for i in range(6):
        evaluation_task_create(project=project, round=rnd, model_a=new, model_b=old, text_a="a" * (100 + 50 * i),
                               text_b="b" * 100, reward_a=float(i % 3 != 0), reward_b=0.5,
                               prompt=make_prompt(project, category="open_qa" if i % 2 else "generation",
                                                  reference="r" * 150))
    bench.print_evaluation(evaluation_summary(project=project, round_id=rnd.pk), "dpo", [1.0, 0.0, 1.0])
    out = capsys.readouterr().out
    assert "reward model:         0.667 [" in out and out.count("length-controlled:  ") == 2
    assert "mean answer length (characters): new policy 225, SFT parent 100, references 150" in out
    assert "oracle without noise: 0.667 (n=3)" in out
    assert "    open_qa           3: —" in out and "    generation        3: —" in out
    assert bench.settings_from(["length_penalty=0.01", "mode=chars"]) == {"length_penalty": 0.01, "mode": "chars"}


def test_a_finished_round_is_appended_as_one_json_line(bench, tmp_path):
    """--results: two rounds give two lines, each with the settings, the stage times, the evaluation's raw and
    length-controlled win-rates, the oracle's p and the mean lengths (what the docs' comparison is built from)."""
    import argparse
    import json

    rate = {"win_rate": 0.6, "low": 0.5, "high": 0.7, "n": 10}
    summary = {"tasks": 10, "human": rate, "reward_model": {**rate, "win_rate": 0.7},
               "length_controlled": {"human": {**rate, "win_rate": 0.55}, "reward_model": {**rate, "win_rate": 0.5}},
               "lengths": {"candidate": 300.0, "baseline": 200.0, "reference": 231.0},
               "warnings": [{"text": "reward rose while the length-controlled rate did not"}]}
    path = tmp_path / "rounds" / "results.jsonl"
    for alpha in (None, 0.2):
        args = argparse.Namespace(method="dpo", ld_alpha=alpha, seed=1, results=path)
        bench.append_result(path, args, {"supervised fine-tuning": 12.34}, {"eval/pairwise_accuracy": 0.6, "loss": 1},
                            summary, [1.0, 0.0, 0.5, 1.0])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["settings"]["ld_alpha"] for r in rows] == [None, 0.2] and "results" not in rows[0]["settings"]
    first = rows[0]
    assert first["stage_seconds"] == {"supervised fine-tuning": 12.3}
    assert first["reward_model"] == {"eval/pairwise_accuracy": 0.6}
    assert first["win_rate"]["human_lc"]["win_rate"] == 0.55 and first["win_rate"]["reward_model_lc"]["win_rate"] == 0.5
    assert first["oracle_p"] == 0.625 and first["lengths"]["reference"] == 231.0
    assert first["warnings"] == ["reward rose while the length-controlled rate did not"]


def test_finished_rounds_print_side_by_side(bench, tmp_path, capsys, monkeypatch):
    """--table FILE: one column per finished round, headed by the settings that differ, with both win-rates per
    judge, the oracle's p and the mean lengths; a missing file is a clear error."""
    import argparse
    import sys

    rate = {"win_rate": 0.6, "low": 0.5, "high": 0.7, "n": 10}
    path = tmp_path / "results.jsonl"
    for alpha, candidate in ((None, 300.0), (0.2, 240.0)):
        summary = {"tasks": 10, "human": rate, "reward_model": None,
                   "length_controlled": {"human": {**rate, "win_rate": 0.55}, "reward_model": None},
                   "lengths": {"candidate": candidate, "baseline": 200.0, "reference": None}, "warnings": []}
        args = argparse.Namespace(method="dpo", ld_alpha=alpha, seed=1, results=path)
        bench.append_result(path, args, {"policy": 60.0}, {"eval/pairwise_accuracy": 0.6}, summary, [1.0, 0.0])
    table = bench.side_by_side([__import__("json").loads(line) for line in path.read_text().splitlines()])
    assert "| | DPO, ld_alpha None | DPO, ld_alpha 0.2 |" in table
    assert "| win-rate, simulated annotators | 0.600 [0.500, 0.700] (n=10) | 0.600 [0.500, 0.700] (n=10) |" in table
    assert "|   length-controlled | 0.550 [0.500, 0.700] (n=10) | 0.550 [0.500, 0.700] (n=10) |" in table
    assert "| win-rate, reward model | — | — |" in table and "| oracle without noise, p | 0.500 | 0.500 |" in table
    assert "| mean answer, new policy (chars) | 300 | 240 |" in table and "| mean answer, references | — | — |" in table
    assert "| policy (s) | 60 | 60 |" in table
    monkeypatch.setattr(sys, "argv", ["round_cpu.py", "--table", str(path)])
    bench.main()
    assert capsys.readouterr().out.strip() == table
    monkeypatch.setattr(sys, "argv", ["round_cpu.py", "--table", str(tmp_path / "none.jsonl")])
    with pytest.raises(SystemExit, match="no results file"):
        bench.main()
