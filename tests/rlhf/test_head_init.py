"""The reward model's score head started from a linear probe (head_init "probe", LP-FT), and held-out scoring that
scores each distinct answer once (tiny model, CPU)."""
from dataclasses import replace

import pytest
import torch

from rlhf.data import PreferencePair

TOPICS = ["cats", "dogs", "the sea", "plants", "trains", "bread"]
ANSWERS = {t: [f"Yes, a long and helpful answer about {t}.", f"Maybe something on {t}.", f"No. Bad {t}."]
           for t in TOPICS}
# every ordered pair of a prompt's three answers, best first: 3 pairs, 3 distinct answers a prompt
PAIRS = [PreferencePair(f"Tell me about {t}.", ANSWERS[t][a], ANSWERS[t][b])
         for t in TOPICS for a, b in [(0, 1), (0, 2), (1, 2)]]


def _config(tmp_path, tiny_dir, **kw):
    from rlhf.reward import RewardRunConfig

    kw = {"max_length": 512, **kw}
    return RewardRunConfig(output_dir=str(tmp_path / "rm"), model=tiny_dir, max_steps=1, per_device_batch_size=2,
                           save_steps=0, eval_fraction=0.0, seed=0, lora_dropout=0.0, **kw)


def _features(tiny_dir, pairs):
    """The base model's features of each pair's chosen and rejected answer, computed pair by pair."""
    from rlhf.models import load_reward_model, load_tokenizer
    from rlhf.reward import conversation, score

    model, tokenizer = load_reward_model(tiny_dir, device="cpu", dtype=torch.float32), load_tokenizer(tiny_dir)
    model.config.pad_token_id = tokenizer.pad_token_id
    chosen = score(model, tokenizer, [conversation(p.prompt, p.chosen) for p in pairs], features=True)[1]
    rejected = score(model, tokenizer, [conversation(p.prompt, p.rejected) for p in pairs], features=True)[1]
    return chosen, rejected


def test_probe_head_init_starts_training_from_the_probe_fitted_on_the_base_features(tmp_path, tiny_dir):
    from rlhf.active import standardised_probe
    from rlhf.reward import _head_weight, _score_module, build_reward_trainer

    pairs = PAIRS + [replace(PAIRS[0], chosen=ANSWERS["cats"][2], rejected=ANSWERS["cats"][0], weight=0.0)]
    trainer = build_reward_trainer(_config(tmp_path, tiny_dir, head_init="probe"), pairs)
    started = _head_weight(_score_module(trainer.model)).detach()[0]
    chosen, rejected = _features(tiny_dir, PAIRS)  # the weight-0 pair (reversed) is left out of the fit
    expected = standardised_probe(chosen - rejected)
    assert torch.allclose(started, expected, atol=1e-4, rtol=1e-3)
    info = trainer.rlhf_head_init
    assert info["mode"] == "probe" and info["pairs"] == len(PAIRS) and info["answers"] == 3 * len(TOPICS)
    assert info["train_accuracy"] == pytest.approx(float(((chosen - rejected) @ expected > 0).float().mean()), abs=1e-4)
    # the probe orders its training pairs better than the head transformers initialises
    fresh = _head_weight(_score_module(build_reward_trainer(_config(tmp_path, tiny_dir), PAIRS).model)).detach()[0]
    assert not torch.allclose(fresh, started)
    loss = {name: float(torch.nn.functional.softplus(-(chosen - rejected) @ head).mean())
            for name, head in [("probe", started), ("fresh", fresh)]}
    assert loss["probe"] < loss["fresh"] and info["train_accuracy"] > 0.5


def test_given_initial_head_and_the_run_records_how_its_head_started(tmp_path, tiny_dir):
    from rlhf.contract import read_metadata
    from rlhf.reward import train_reward

    artifacts = train_reward(_config(tmp_path, tiny_dir, head_init="probe"), PAIRS)
    record = read_metadata(artifacts.output_dir)["head_init"]
    assert record["mode"] == "probe" and record["pairs"] == len(PAIRS)
    artifacts = train_reward(_config(tmp_path, tiny_dir), PAIRS)
    assert read_metadata(artifacts.output_dir)["head_init"] == {"mode": "random"}
    with pytest.raises(ValueError, match="the score head has shape"):
        train_reward(_config(tmp_path, tiny_dir), PAIRS, initial_head=torch.zeros(7))


def test_bad_head_init_fails_before_any_model_loads(tmp_path):
    from rlhf.reward import RewardRunConfig, train_reward

    config = RewardRunConfig(output_dir=str(tmp_path / "rm"), model=str(tmp_path / "none"), head_init="linear")
    with pytest.raises(ValueError, match=r"head_init must be one of \['random', 'probe'\]"):
        train_reward(config, PAIRS)
    assert not (tmp_path / "rm").exists()


def test_probe_head_init_needs_a_pair_of_positive_weight(tmp_path, tiny_dir):
    from rlhf.reward import build_reward_trainer

    with pytest.raises(ValueError, match="at least one pair of positive weight"):
        build_reward_trainer(_config(tmp_path, tiny_dir, head_init="probe"), [replace(p, weight=0.0) for p in PAIRS])


def test_score_pairs_scores_each_distinct_answer_once_with_the_same_rewards(tiny_dir, monkeypatch):
    import rlhf.reward as reward
    from rlhf.models import load_reward_model, load_tokenizer

    model, tokenizer = load_reward_model(tiny_dir, device="cpu", dtype=torch.float32), load_tokenizer(tiny_dir)
    model.config.pad_token_id = tokenizer.pad_token_id
    one_by_one = [float(reward.score(model, tokenizer, [reward.conversation(p.prompt, a)])[0])
                  for p in PAIRS for a in (p.chosen, p.rejected)]
    scored = []
    real = reward.score
    monkeypatch.setattr(reward, "score", lambda m, t, items, *a, **k: scored.append(len(items)) or real(m, t, items, *a, **k))
    chosen, rejected = reward.score_pairs(model, tokenizer, PAIRS)
    assert scored == [3 * len(TOPICS)]  # 18 pairs, 36 answers, 18 of them distinct
    assert torch.allclose(torch.stack([chosen, rejected], 1).flatten(), torch.tensor(one_by_one), atol=1e-5)
    # the same prompt given as text and as a one-user-turn chat is one conversation
    where, items = reward.distinct_conversations([
        PreferencePair("Tell me about cats.", "Yes.", "No."),
        PreferencePair([{"role": "user", "content": "Tell me about cats."}], "Yes.", "No.")])
    assert len(items) == 2 and where.tolist() == [0, 0, 1, 1]


def _long(pair, words=120):
    return replace(pair, chosen=pair.chosen + " really" * words)


def test_pairs_longer_than_max_length_are_dropped_before_the_probe_and_counted(tmp_path, tiny_dir):
    from rlhf.contract import read_metadata
    from rlhf.models import load_tokenizer
    from rlhf.reward import build_reward_trainer, conversation, drop_too_long, encode_for_reward, train_reward

    tokenizer = load_tokenizer(tiny_dir)
    pairs = PAIRS[:-2] + [_long(p) for p in PAIRS[-2:]]
    longest = [max(len(encode_for_reward(tokenizer, conversation(p.prompt, a))) for a in (p.chosen, p.rejected))
               for p in pairs]
    limit = max(longest[:-2])
    assert min(longest[-2:]) > limit  # the two long pairs do not fit, every other one does
    kept, lengths, dropped = drop_too_long(pairs, tokenizer, limit)
    assert kept == pairs[:-2] and lengths == longest[:-2] and dropped == 2
    assert drop_too_long(pairs, tokenizer, limit + 10_000) == (pairs, longest, 0)
    # TRL's own filter finds nothing left to drop; the probe was fitted on the pairs that train
    trainer = build_reward_trainer(_config(tmp_path, tiny_dir, head_init="probe", max_length=limit), pairs)
    assert len(trainer.train_dataset) == len(pairs) - 2 and trainer.rlhf_too_long == 2
    assert trainer.rlhf_head_init["pairs"] == len(pairs) - 2
    artifacts = train_reward(_config(tmp_path, tiny_dir, max_length=limit), pairs)
    meta = read_metadata(artifacts.output_dir)
    assert meta["num_pairs"] == len(pairs) - 2 and meta["num_pairs_too_long"] == 2


def test_no_pair_within_max_length_is_a_clear_error_before_the_model_loads(tmp_path, tiny_dir, monkeypatch):
    import rlhf.reward as reward

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(reward, "load_reward_model", no_model)
    with pytest.raises(ValueError, match=r"no pair fits max_length=8 tokens: the shortest of the 18 pairs takes \d+"):
        reward.train_reward(_config(tmp_path, tiny_dir, max_length=8), PAIRS)
    assert not (tmp_path / "rm").exists()


def test_a_resumed_probe_run_takes_its_head_from_the_checkpoint_without_fitting_again(tmp_path, tiny_dir, monkeypatch):
    import rlhf.reward as reward
    from rlhf.contract import last_checkpoint, read_metadata

    config = replace(_config(tmp_path, tiny_dir, head_init="probe"), max_steps=2, save_steps=1, save_total_limit=None)
    first = read_metadata(reward.train_reward(config, PAIRS).output_dir)["head_init"]
    assert first["mode"] == "probe" and last_checkpoint(config.output_dir)

    def no_probe(*args, **kwargs):
        raise AssertionError("the probe was fitted again")

    monkeypatch.setattr(reward, "probe_head_for", no_probe)
    trainer = reward.build_reward_trainer(replace(config, resume=True), PAIRS)
    assert trainer.rlhf_head_init == {**first, "resumed": True}
    with pytest.raises(AssertionError, match="fitted again"):  # a run that does not resume fits its own
        reward.build_reward_trainer(config, PAIRS)
