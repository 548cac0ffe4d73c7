"""SFT, reward model and DPO on a tiny random-weight Llama (CPU, seconds each)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlhf import Cancelled
from rlhf.contract import last_checkpoint, read_metadata
from rlhf.data import Demonstration, PreferencePair

REPO = Path(__file__).resolve().parents[2]

DEMOS = [Demonstration(f"Tell me a fact about cats, number {i}.", "Cats sleep for most of the day and purr.")
         for i in range(16)]
TOPICS = ["cats", "dogs", "the sea", "plants", "France", "the sky", "five", "ten"]
PAIRS = [PreferencePair(f"Tell me about {t}.", f"Yes, a great and helpful answer about {t}.",
                        f"No. A bad, awful and wrong answer about {t}.") for t in TOPICS for _ in range(3)]


def _sft_config(tmp_path, tiny_dir, **kw):
    from rlhf.sft import SFTRunConfig

    base = dict(output_dir=str(tmp_path / "sft"), model=tiny_dir, max_steps=8, per_device_batch_size=4,
                learning_rate=3e-3, max_length=512, save_steps=0, seed=0)
    return SFTRunConfig(**{**base, **kw})


def _mean_completion_loss(trainer) -> float:
    model = trainer.model.eval()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    with torch.no_grad():
        return float(model(**{k: v.to(model.device) for k, v in batch.items()}).loss)


def test_sft_loss_falls_and_only_assistant_tokens_carry_loss(tmp_path, tiny_dir, tiny_tokenizer):
    from rlhf.sft import build_sft_trainer

    config = _sft_config(tmp_path, tiny_dir)
    trainer = build_sft_trainer(config, DEMOS)
    # labels: -100 on system/user/template tokens, the token ids themselves on the assistant's answer
    row = trainer.train_dataset[0]
    batch = trainer.data_collator([row])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    prompt_ids = tiny_tokenizer.apply_chat_template(DEMOS[0].prompt, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True)["input_ids"]
    n_prompt = len(prompt_ids)
    assert ids[:n_prompt].tolist() == prompt_ids
    assert (labels[:n_prompt] == -100).all()
    assert (labels[n_prompt:] == ids[n_prompt:]).all()
    answer = tiny_tokenizer.decode(ids[n_prompt:])
    assert answer.startswith(DEMOS[0].response) and tiny_tokenizer.eos_token in answer

    before = _mean_completion_loss(trainer)
    trainer.model.train()
    trainer.train()
    after = _mean_completion_loss(trainer)
    assert after < before - 0.1, (before, after)


def test_sft_progress_metadata_and_merged_model(tmp_path, tiny_dir):
    from rlhf.models import load_causal_lm
    from rlhf.sft import train_sft

    seen = []
    art = train_sft(_sft_config(tmp_path, tiny_dir, max_steps=4), DEMOS, progress=lambda s, t, m: seen.append((s, t, m)))
    assert [s for s, _, _ in seen] == [1, 2, 3, 4] and all(t == 4 for _, t, _ in seen)
    assert "loss/train" in seen[-1][2]
    meta = read_metadata(art.output_dir)
    assert meta["status"] == "succeeded" and meta["kind"] == "sft"
    assert meta["data_hash"].startswith("sha256:") and meta["config"]["max_steps"] == 4
    assert meta["base_model"]["path"] == tiny_dir
    merged = load_causal_lm(art.model_dir)  # LoRA merged into a plain checkpoint
    base = load_causal_lm(tiny_dir)
    assert not hasattr(merged, "peft_config")
    assert any(not torch.equal(a, b) for a, b in zip(merged.state_dict().values(), base.state_dict().values()))


def test_cancel_from_progress_saves_checkpoint_and_marks_cancelled(tmp_path, tiny_dir):
    from rlhf.sft import train_sft

    def progress(step, total, metrics):
        if step == 3:
            raise Cancelled()

    art = train_sft(_sft_config(tmp_path, tiny_dir, max_steps=8), DEMOS, progress=progress)
    assert art.status == "cancelled" and art.global_step == 3 and art.model_dir is None
    assert read_metadata(art.output_dir)["status"] == "cancelled"
    assert last_checkpoint(art.output_dir).endswith("checkpoint-3")


KILL_SCRIPT = """
import os, signal, sys
from rlhf.sft import SFTRunConfig, train_sft
from rlhf.data import Demonstration
demos = [Demonstration(f"Tell me a fact about cats, number {i}.", "Cats sleep.") for i in range(16)]
cfg = SFTRunConfig(output_dir=sys.argv[1], model=sys.argv[2], max_steps=8, per_device_batch_size=4,
                   learning_rate=3e-3, max_length=512, save_steps=2, save_total_limit=None, seed=0)
def progress(step, total, metrics):
    if step == 5:
        os.kill(os.getpid(), signal.SIGKILL)  # a worker dying mid-run
train_sft(cfg, demos, progress=progress)
"""


def test_run_killed_after_checkpoint_resumes_and_finishes(tmp_path, tiny_dir):
    from rlhf.sft import train_sft

    out = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(out), tiny_dir], env=env, capture_output=True,
                          timeout=180)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert last_checkpoint(out).endswith("checkpoint-4") and not (out / "metadata.json").exists()

    steps = []
    art = train_sft(_sft_config(tmp_path, tiny_dir, output_dir=str(out), save_steps=2, save_total_limit=None,
                                resume=True), DEMOS, progress=lambda s, t, m: steps.append(s))
    assert steps == [5, 6, 7, 8]
    assert art.status == "succeeded" and art.global_step == 8
    assert art.metrics["resumed_from"].endswith("checkpoint-4")
    assert json.loads((out / "checkpoint-8" / "trainer_state.json").read_text())["global_step"] == 8


def test_reward_model_learns_synthetic_preference(tmp_path, tiny_dir):
    from rlhf.models import load_reward_model, load_tokenizer
    from rlhf.reward import RewardRunConfig, pairwise_accuracy, train_reward

    config = RewardRunConfig(output_dir=str(tmp_path / "rm"), model=tiny_dir, max_steps=20, per_device_batch_size=8,
                             learning_rate=3e-3, max_length=512, save_steps=0, eval_fraction=0.25)
    art = train_reward(config, PAIRS)
    assert art.metrics["eval/pairs"] == 6 and art.metrics["eval/pairwise_accuracy"] >= 0.9
    model, tok = load_reward_model(art.model_dir), load_tokenizer(art.model_dir)
    assert pairwise_accuracy(model, tok, PAIRS) >= 0.9  # training accuracy, reloaded from disk
    swapped = [PreferencePair(p.prompt, p.rejected, p.chosen) for p in PAIRS]
    assert pairwise_accuracy(model, tok, swapped) <= 0.1


def test_score_matches_reward_trainer_inputs(tmp_path, tiny_dir):
    from rlhf.reward import RewardRunConfig, build_reward_trainer, conversation, score

    trainer = build_reward_trainer(RewardRunConfig(output_dir=str(tmp_path / "rm2"), model=tiny_dir, use_lora=False,
                                                   max_length=512, max_steps=1), PAIRS[:4])
    model, tok = trainer.model.eval(), trainer.processing_class
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])  # chosen rows, then rejected rows
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"].to(model.device),
                         attention_mask=batch["attention_mask"].to(model.device)).logits[:, 0].float().cpu()
    items = [conversation(p.prompt, p.chosen) for p in PAIRS[:4]] + [conversation(p.prompt, p.rejected) for p in PAIRS[:4]]
    assert torch.allclose(score(model, tok, items, batch_size=3).float().cpu(), expected, atol=1e-5)


def test_dpo_moves_the_policy_toward_chosen(tmp_path, tiny_dir, tiny_tokenizer):
    from rlhf.dpo import DPORunConfig, train_dpo
    from rlhf.models import load_causal_lm
    from rlhf.reward import conversation
    from rlhf.sampling import token_logprobs

    def margin(model):  # mean over pairs of log p(chosen) - log p(rejected), whole conversation
        out = []
        for p in PAIRS[:8]:
            lps = []
            for text in (p.chosen, p.rejected):
                ids = tiny_tokenizer.apply_chat_template(conversation(p.prompt, text), tokenize=True,
                                                         return_dict=True, return_tensors="pt")["input_ids"]
                ids = ids.to(model.device)  # CUDA when present
                with torch.no_grad():
                    lps.append(token_logprobs(model, ids, torch.ones_like(ids)).sum().cpu())
            out.append(lps[0] - lps[1])
        return float(torch.stack(out).mean())

    config = DPORunConfig(output_dir=str(tmp_path / "dpo"), model=tiny_dir, max_steps=10, per_device_batch_size=8,
                          learning_rate=3e-3, max_length=512, save_steps=0)
    art = train_dpo(config, PAIRS)
    assert art.status == "succeeded" and art.metrics["rewards/accuracies"] > 0.5
    before, after = margin(load_causal_lm(tiny_dir)), margin(load_causal_lm(art.model_dir))
    assert after > before + 1.0, (before, after)


def test_dpo_sft_weight_and_ld_alpha_reach_trl_and_train(tmp_path, tiny_dir):
    from rlhf.dpo import DPORunConfig, build_dpo_trainer, train_dpo

    config = DPORunConfig(output_dir=str(tmp_path / "dpo"), model=tiny_dir, max_steps=4, per_device_batch_size=8,
                          learning_rate=3e-3, max_length=512, save_steps=0, sft_weight=0.5, ld_alpha=0.3)
    args = build_dpo_trainer(config, PAIRS).args
    assert args.loss_type == ["sigmoid", "sft"] and args.loss_weights == [1.0, 0.5] and args.ld_alpha == 0.3
    plain = build_dpo_trainer(DPORunConfig(output_dir=str(tmp_path / "plain"), model=tiny_dir, max_steps=1), PAIRS).args
    assert plain.loss_type == ["sigmoid"] and plain.ld_alpha is None
    art = train_dpo(config, PAIRS)
    assert art.status == "succeeded" and art.metrics["rewards/accuracies"] > 0.5


@pytest.mark.parametrize("bad, message", [
    ({"sft_weight": -1.0}, "sft_weight must be 0 or more"),
    ({"ld_alpha": 1.5}, r"ld_alpha must lie in \[0, 1\]"),
    ({"loss_type": "sft", "sft_weight": 1.0}, "with loss_type 'sft' use sft_weight 0"),
])
def test_dpo_bad_loss_settings_fail_before_anything_loads(tmp_path, bad, message):
    from rlhf.dpo import DPORunConfig, train_dpo

    out = tmp_path / "dpo"
    with pytest.raises(ValueError, match=message):  # the model path does not exist: nothing was loaded
        train_dpo(DPORunConfig(output_dir=str(out), model=str(tmp_path / "missing"), **bad), PAIRS)
    assert not out.exists()
