"""Sampling: K completions per prompt, EOS truncation, token log-probs, the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from rlhf.sampling import generate_ids, response_logprobs, sample, token_logprobs, truncate_after_eos

REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["Tell me about cats.", [{"role": "user", "content": "What is the capital of France?"}], "hi"]


def test_truncate_after_eos():
    ids = torch.tensor([[5, 6, 2, 7, 8], [5, 6, 7, 8, 9], [2, 9, 9, 9, 9]])
    out, mask, has_eos = truncate_after_eos(ids, [2], pad_token_id=0)
    assert out.tolist() == [[5, 6, 2, 0, 0], [5, 6, 7, 8, 9], [2, 0, 0, 0, 0]]
    assert mask.sum(1).tolist() == [3, 5, 1] and has_eos.tolist() == [True, False, True]


def test_sample_k_per_prompt_reproducible(tiny_dir, tiny_tokenizer):
    from rlhf.models import load_causal_lm

    model = load_causal_lm(tiny_dir)
    kw = dict(k=3, max_new_tokens=12, temperature=1.0, top_p=0.9, seed=7, batch_size=4)
    samples = sample(model, tiny_tokenizer, PROMPTS, **kw)
    assert [(s.prompt_index, s.sample_index) for s in samples] == [(i, j) for i in range(3) for j in range(3)]
    for s in samples:
        assert 1 <= s.completion_tokens <= 12 and s.prompt_tokens > 5 and s.seed == 7
        assert (s.finish_reason == "length") == (s.completion_tokens == 12 and "<|im_end|>" not in s.completion)
        assert s.decoding["top_p"] == 0.9 and s.decoding["max_new_tokens"] == 12
    assert samples[3].prompt == PROMPTS[1]
    again = sample(model, tiny_tokenizer, PROMPTS, **kw)
    assert [s.completion for s in again] == [s.completion for s in samples]
    other = sample(model, tiny_tokenizer, PROMPTS, **{**kw, "seed": 8})
    assert [s.completion for s in other] != [s.completion for s in samples]


def test_response_logprobs_match_unpadded_reference(tiny_dir, tiny_tokenizer):
    from rlhf.models import load_causal_lm

    model = load_causal_lm(tiny_dir)
    torch.manual_seed(0)
    out = generate_ids(model, tiny_tokenizer, ["hi", "Tell me a long story about the sea please."], max_new_tokens=8)
    assert out["query_mask"][0].sum() < out["query_mask"][1].sum()  # row 0 is left padded
    lp = response_logprobs(model, out["query_ids"], out["query_mask"], out["response_ids"], out["response_mask"])
    for b in range(2):
        q = out["query_ids"][b][out["query_mask"][b]]
        r = out["response_ids"][b][out["response_mask"][b]]
        ids = torch.cat([q, r]).unsqueeze(0)
        ref = token_logprobs(model, ids, torch.ones_like(ids))[0, len(q) - 1:]
        assert torch.allclose(lp[b][out["response_mask"][b]], ref, atol=1e-4)
        assert (lp[b][~out["response_mask"][b]] == 0).all()


def test_cli_sample_writes_samples_and_metadata(tiny_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ["hi", "Tell me about dogs."]))
    config = tmp_path / "sample.json"
    config.write_text(json.dumps({"model": tiny_dir, "prompts": str(prompts), "output_dir": str(tmp_path / "out"),
                                  "k": 2, "max_new_tokens": 6, "seed": 3}))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "rlhf", "sample", "--config", str(config), "--set", "k=3"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["samples"] == 6
    rows = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {r["prompt_index"] for r in rows} == {0, 1}
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert meta["kind"] == "sample" and meta["config"]["k"] == 3 and meta["metrics"]["samples"] == 6
    assert meta["weights_dtype"] == "float32"  # the suite pins fp32 (RLHF_CPU_BF16=0, tests/conftest.py)


def test_sampling_on_a_cpu_with_native_bf16_loads_bf16_weights(tiny_dir, tmp_path, monkeypatch):
    """dtype "auto" on a native-bf16 CPU (forced): the sampling run loads bf16 weights, says so in its
    metadata, and a seeded run is reproducible; an explicit float32 still loads fp32."""
    from rlhf.config import SamplingConfig
    from rlhf.sampling import run_sampling

    monkeypatch.setenv("RLHF_CPU_BF16", "1")
    prompts = ["Hello there.", "Name a river."]
    config = SamplingConfig(model=tiny_dir, output_dir=str(tmp_path / "s"), k=2, max_new_tokens=6, seed=3)
    first, again = run_sampling(config, prompts=prompts), run_sampling(config, prompts=prompts)
    assert len(first) == 4 and [s.completion for s in first] == [s.completion for s in again]
    assert json.loads((tmp_path / "s" / "metadata.json").read_text())["weights_dtype"] == "bfloat16"
    config.dtype, config.output_dir = "float32", str(tmp_path / "f")
    run_sampling(config, prompts=prompts)
    assert json.loads((tmp_path / "f" / "metadata.json").read_text())["weights_dtype"] == "float32"


def _left_padded(tokenizer, texts):
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    tokenizer.padding_side = side
    return enc


def _hf_response(model, enc, n, eos, pad, **kw):
    out = model.generate(**enc, max_new_tokens=n, eos_token_id=eos, pad_token_id=pad, **kw)
    return out[:, enc["input_ids"].shape[1]:]


def test_decode_matches_generate_greedy_while_rows_finish_and_leave(tiny_dir, tiny_tokenizer):
    """Greedy: the same tokens as model.generate, though rows end at different steps (every row that
    emits one of the frequent tokens chosen as EOS here leaves the batch) and prompts are left-padded."""
    from rlhf.models import load_causal_lm
    from rlhf.sampling import decode

    model = load_causal_lm(tiny_dir).eval()
    enc = _left_padded(tiny_tokenizer, ["hi", "Tell me a long story about the sea please.", "Why is the sky blue?",
                                        "a b c d e f g h i j k l m n o p", "What rhymes with orange?"])
    pad = tiny_tokenizer.pad_token_id
    reference = _hf_response(model, enc, 24, None, pad, do_sample=False)
    eos = reference[:, 5].tolist()[:2]  # tokens the model emits: rows end early, at different steps
    expected = _hf_response(model, enc, 24, eos, pad, do_sample=False)
    ours = decode(model, enc["input_ids"], enc["attention_mask"], 24, eos, pad, do_sample=False)
    ended = torch.isin(expected, torch.tensor(eos)).any(1)
    assert 0 < int(ended.sum()) < len(ended)  # some rows left the batch early, some ran to the cap
    width = expected.shape[1]
    assert ours.shape[1] == width and torch.equal(ours, expected)
    assert decode(model, enc["input_ids"], enc["attention_mask"], 0, eos, pad).shape == (5, 0)
    penalised = decode(model, enc["input_ids"], enc["attention_mask"], 24, eos, pad, do_sample=False,
                       repetition_penalty=1.3)
    assert torch.equal(penalised, _hf_response(model, enc, 24, eos, pad, do_sample=False, repetition_penalty=1.3))


def test_draw_follows_the_probabilities_and_never_picks_a_zero():
    from rlhf.sampling import draw

    probs = torch.tensor([[0.0, 0.5, 0.0, 0.2, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
    torch.manual_seed(0)
    picks = torch.stack([draw(probs) for _ in range(20_000)])  # (N, 2)
    counts = torch.bincount(picks[:, 0], minlength=6).float() / len(picks)
    assert counts[[0, 2, 5]].sum() == 0 and (picks[:, 1] == 5).all()
    assert torch.allclose(counts, probs[0], atol=0.015), counts
    # rows that do not sum to one (float rounding after top-p) still draw in proportion
    assert (draw(torch.tensor([[0.0, 0.2, 0.0]])) == 1).all()


def test_decode_samples_from_the_processed_distribution_reproducibly(tiny_dir, tiny_tokenizer):
    """Temperature, top-k and top-p: every sampled token lies in the set those processors keep, the same seed
    gives the same tokens, and another seed other tokens."""
    from rlhf.models import load_causal_lm
    from rlhf.sampling import decode, logits_processors

    model = load_causal_lm(tiny_dir).eval()
    enc = _left_padded(tiny_tokenizer, ["Tell me about cats.", "hi"])
    pad = tiny_tokenizer.pad_token_id
    settings = {"do_sample": True, "temperature": 0.7, "top_k": 5, "top_p": 0.9}
    torch.manual_seed(3)
    ours = decode(model, enc["input_ids"], enc["attention_mask"], 12, [], pad, **settings)
    processors = logits_processors(**settings)
    for t in range(ours.shape[1]):  # re-score each step without a cache and check the token was allowed
        ids = torch.cat([enc["input_ids"], ours[:, :t]], dim=1)
        mask = torch.cat([enc["attention_mask"], torch.ones_like(ours[:, :t])], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1].float()
        allowed = torch.isfinite(processors(ids, logits))
        assert allowed.sum(1).le(5).all() and allowed[torch.arange(2), ours[:, t]].all()
    torch.manual_seed(3)
    assert torch.equal(decode(model, enc["input_ids"], enc["attention_mask"], 12, [], pad, **settings), ours)
    torch.manual_seed(4)
    assert not torch.equal(decode(model, enc["input_ids"], enc["attention_mask"], 12, [], pad, **settings), ours)
