"""The decoder (rlhf.decoder): greedy tokens equal HF generate, seeded sampling reproducible, returned
log-probs equal a full forward's, one shared prefill equals K prefills, the static-cache step (eager and
compiled) equals the eager loop, an in-place weight refresh reaches the decoder."""

import time

import pytest
import torch

from rlhf import decoder
from rlhf.sampling import eos_ids, generate_ids, logits_processors, render_prompts, response_logprobs

PROMPTS = ["hi", "Tell me a long story about the sea and the sky please.", "What is the capital of France?"]


@pytest.fixture(scope="module")
def tiny(tiny_dir, tiny_tokenizer):
    from rlhf.models import load_causal_lm

    model = load_causal_lm(tiny_dir, device="cpu", dtype="float32").eval()
    tok = tiny_tokenizer
    tok.padding_side = "left"
    enc = tok(render_prompts(tok, PROMPTS), add_special_tokens=False, padding=True, return_tensors="pt")
    tok.padding_side = "right"
    return model, tok, enc["input_ids"], enc["attention_mask"]


def _hf_greedy(model, tok, ids, mask, n):
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                         eos_token_id=eos_ids(model, tok), pad_token_id=tok.pad_token_id)
    return out[:, ids.shape[1]:]


def _decode(model, tok, ids, mask, n, **kw):
    return decoder.decode(model, ids, mask, n, eos_ids(model, tok), tok.pad_token_id, **kw)


def _same(a, b, pad):
    """Equal up to trailing padding columns."""
    n = max(a.shape[1], b.shape[1])
    a = torch.nn.functional.pad(a, (0, n - a.shape[1]), value=pad)
    b = torch.nn.functional.pad(b, (0, n - b.shape[1]), value=pad)
    return torch.equal(a, b)


@pytest.mark.parametrize("opts", [dict(engine="eager"), dict(engine="eager", shrink=False, sync_every=4),
                                  dict(engine="static", compile=False)], ids=["eager-shrink", "eager-masked", "static"])
def test_greedy_equals_hf_generate(tiny, opts):
    model, tok, ids, mask = tiny
    ref = _hf_greedy(model, tok, ids, mask, 20)
    out = _decode(model, tok, ids, mask, 20, do_sample=False, **opts)
    assert out.shape == (3, 20) and _same(out, ref, tok.pad_token_id), (out, ref)  # random weights: no EOS


@pytest.mark.parametrize("opts", [dict(engine="eager"), dict(engine="eager", shrink=False),
                                  dict(engine="static", compile=False)], ids=["eager-shrink", "eager-masked", "static"])
def test_k_shared_prefill_equals_k_prefills(tiny, opts):
    model, tok, ids, mask = tiny
    shared = _decode(model, tok, ids, mask, 16, do_sample=False, num_samples=3, **opts)
    separate = _decode(model, tok, ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0), 16, do_sample=False,
                       **opts)
    assert shared.shape[0] == 9 and _same(shared, separate, tok.pad_token_id)


@pytest.mark.parametrize("opts", [dict(engine="eager"), dict(engine="eager", shrink=False),
                                  dict(engine="static", compile=False)], ids=["eager-shrink", "eager-masked", "static"])
def test_seeded_sampling_reproducible_and_logprobs_equal_full_forward(tiny, opts):
    model, tok, ids, mask = tiny
    kw = dict(do_sample=True, temperature=0.7, top_p=0.9, top_k=50, num_samples=2, return_logprobs=True, **opts)
    torch.manual_seed(3)
    a, lp_a = _decode(model, tok, ids, mask, 24, **kw)
    torch.manual_seed(3)
    b, lp_b = _decode(model, tok, ids, mask, 24, **kw)
    torch.manual_seed(4)
    c, _ = _decode(model, tok, ids, mask, 24, **kw)
    assert torch.equal(a, b) and torch.equal(lp_a, lp_b) and not _same(a, c, tok.pad_token_id)
    from rlhf.sampling import truncate_after_eos

    r, rm, _ = truncate_after_eos(a, eos_ids(model, tok), tok.pad_token_id)
    q, qm = ids.repeat_interleave(2, 0), mask.repeat_interleave(2, 0).bool()
    full = response_logprobs(model, q, qm, r, rm, temperature=0.7)
    assert lp_a.shape == r.shape and rm.sum() > 20
    assert torch.allclose(lp_a * rm, full, atol=1e-5, rtol=0), (lp_a * rm - full).abs().max()


def test_generate_ids_returns_logprobs_with_k(tiny):
    model, tok, _, _ = tiny
    torch.manual_seed(0)
    out = generate_ids(model, tok, PROMPTS[:2], max_new_tokens=8, num_samples=2, return_logprobs=True)
    assert out["query_ids"].shape[0] == out["response_ids"].shape[0] == out["logprobs"].shape[0] == 4
    assert torch.equal(out["query_ids"][0], out["query_ids"][1]) and not torch.equal(out["query_ids"][1],
                                                                                     out["query_ids"][2])
    ref = response_logprobs(model, out["query_ids"], out["query_mask"], out["response_ids"], out["response_mask"])
    assert torch.allclose(out["logprobs"], ref, atol=1e-5, rtol=0)


def test_process_logits_match_hf_processors():
    torch.manual_seed(0)
    logits, seen = torch.randn(5, 97) * 3, torch.randint(0, 97, (5, 11))
    for kw in [dict(temperature=0.7), dict(top_k=5), dict(top_p=0.8), dict(temperature=1.3, top_k=20, top_p=0.5),
               dict(repetition_penalty=1.3, top_p=0.9)]:
        ref = logits_processors(True, **kw)(seen, logits.clone())
        got = decoder.process_logits(logits, seen, **kw)
        assert torch.equal(torch.isinf(ref), torch.isinf(got)) and torch.allclose(ref, got, atol=1e-6), kw


def test_bad_settings_are_refused(tiny, tiny_dir):
    model, tok, ids, mask = tiny
    with pytest.raises(ValueError, match="unknown decoder engine 'fast'"):
        _decode(model, tok, ids, mask, 4, engine="fast")
    with pytest.raises(ValueError, match="no repetition penalty"):
        _decode(model, tok, ids, mask, 4, engine="static", repetition_penalty=1.2)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        _decode(model, tok, ids, mask, 4, num_samples=0)
    with pytest.raises(ValueError, match="sync_every"):
        _decode(model, tok, ids, mask, 4, sync_every=0)
    with pytest.raises(ValueError, match="return_logprobs needs rlhf's decoder"):
        generate_ids(model, tok, PROMPTS, max_new_tokens=4, cache_implementation="static", return_logprobs=True)
    with pytest.raises(ValueError, match="Llama-family"):
        decoder.StaticDecoder(torch.nn.Linear(2, 2), 1, 16, 16)


def test_sampling_run_refuses_unknown_decoder_before_writing(tmp_path, tiny_dir):
    from rlhf.config import SamplingConfig
    from rlhf.sampling import run_sampling

    out = tmp_path / "out"
    with pytest.raises(ValueError, match="unknown decoder 'fast'"):
        run_sampling(SamplingConfig(model=tiny_dir, output_dir=str(out), decoder="fast"), prompts=["hi"])
    assert not out.exists()


def test_static_decoder_sees_in_place_weight_refresh(tiny, tiny_dir):
    """A merged LoRA copy is refreshed by copying into the same tensors: the kept decoder (and its step,
    compiled or not) must decode with the new weights."""
    from rlhf.models import load_causal_lm

    model, tok, ids, mask = tiny
    gen = load_causal_lm(tiny_dir, device="cpu", dtype="float32").eval()  # the "merged copy"
    before = _decode(gen, tok, ids, mask, 12, do_sample=False, engine="static", compile=False)
    dec = decoder.static_decoder(gen, 3, decoder.bucket(ids.shape[1]), decoder.bucket(12), False)
    torch.manual_seed(1)
    new = {n: p + 0.05 * torch.randn_like(p) for n, p in gen.named_parameters()}
    with torch.no_grad():
        for n, p in gen.named_parameters():
            p.copy_(new[n])
    after = _decode(gen, tok, ids, mask, 12, do_sample=False, engine="static", compile=False)
    assert decoder.static_decoder(gen, 3, decoder.bucket(ids.shape[1]), decoder.bucket(12), False) is dec
    assert _same(after, _hf_greedy(gen, tok, ids, mask, 12), tok.pad_token_id)
    assert not _same(after, before, tok.pad_token_id)


def test_compiled_static_step_equals_eager_and_refresh(tiny, tiny_dir):
    """torch.compile(fullgraph=True) of the static step with the default inductor backend on CPU (the CUDA
    mode 'reduce-overhead' adds CUDA graphs, which a CPU has not): same greedy tokens as HF generate, no
    recompile for another prompt length inside the bucket, and an in-place refresh is seen."""
    from torch._dynamo.utils import counters

    from rlhf.models import load_causal_lm

    model, tok, ids, mask = tiny
    gen = load_causal_lm(tiny_dir, device="cpu", dtype="float32").eval()
    t0 = time.time()
    out = _decode(gen, tok, ids, mask, 12, do_sample=False, engine="static", compile=True)
    compile_s = time.time() - t0
    assert _same(out, _hf_greedy(gen, tok, ids, mask, 12), tok.pad_token_id), compile_s
    frames = counters["stats"]["unique_graphs"]
    ids2, mask2 = ids[:, 2:], mask[:, 2:]  # shorter prompts, same bucket
    assert decoder.bucket(ids2.shape[1]) == decoder.bucket(ids.shape[1])
    out2 = _decode(gen, tok, ids2, mask2, 12, do_sample=False, engine="static", compile=True)
    assert counters["stats"]["unique_graphs"] == frames  # no recompile
    assert _same(out2, _hf_greedy(gen, tok, ids2, mask2, 12), tok.pad_token_id)
    with torch.no_grad():
        for p in gen.parameters():
            p.mul_(1.1).add_(0.03)
    out3 = _decode(gen, tok, ids, mask, 12, do_sample=False, engine="static", compile=True)
    assert counters["stats"]["unique_graphs"] == frames
    assert _same(out3, _hf_greedy(gen, tok, ids, mask, 12), tok.pad_token_id) and not _same(out3, out, 0)
    # sampling inside the compiled step (the exponential race, no vocabulary scan): seeded, reproducible
    sampled = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        sampled.append(_decode(gen, tok, ids, mask, 12, do_sample=True, top_k=20, engine="static", compile=True))
    dec = decoder.static_decoder(gen, 3, decoder.bucket(ids.shape[1]), decoder.bucket(12), True)
    assert dec.compile_error is None
    assert torch.equal(sampled[0], sampled[1]) and not torch.equal(sampled[0], sampled[2])


def test_race_follows_the_probabilities_and_never_picks_a_zero():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.2, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
    torch.manual_seed(0)
    picks = decoder.race(probs.repeat(20_000, 1)).view(20_000, 2)
    counts = torch.bincount(picks[:, 0], minlength=6).float() / len(picks)
    assert counts[[0, 2, 5]].sum() == 0 and (picks[:, 1] == 5).all()
    assert torch.allclose(counts, probs[0], atol=0.015), counts
    assert (decoder.race(torch.tensor([[0.0, 0.2, 0.0]] * 50)) == 1).all()  # rows need not sum to one


def test_race_never_picks_a_zero_even_when_the_noise_is_exactly_zero(monkeypatch):
    monkeypatch.setattr(torch.Tensor, "exponential_", lambda self, *a, **k: self.zero_())
    assert decoder.race(torch.tensor([[0.0, 0.0, 0.3, 0.0, 0.7]])).item() in (2, 4)


def test_a_step_that_fails_to_compile_falls_back_to_the_eager_step(tiny, monkeypatch, caplog):
    """A compiler bug (on CUDA, torch 2.11's inductor failed on a 49k-vocabulary cumulative sum) must not stop
    a rollout: the decoder warns, records why, decodes with the eager static step (same tokens) and does not
    try to compile again for those settings."""
    model, tok, ids, mask = tiny
    calls = []

    def broken_compile(fn, **kwargs):
        def compiled(*args, **kw):
            calls.append(kwargs)
            raise torch._dynamo.exc.BackendCompilerFailed(
                "inductor", TypeError("list indices must be integers or slices, not NoneType"), None)
        return compiled

    expected = _decode(model, tok, ids, mask, 10, do_sample=False, engine="static", compile=False)
    torch.manual_seed(1)
    expected_sampled = _decode(model, tok, ids, mask, 10, do_sample=True, engine="static", compile=False)
    monkeypatch.setattr(decoder.torch, "compile", broken_compile)
    dec = decoder.StaticDecoder(model, 3, decoder.bucket(ids.shape[1]), decoder.bucket(10), compile=True)
    monkeypatch.setattr(decoder, "static_decoder", lambda *a, **k: dec)
    with caplog.at_level("WARNING", logger="rlhf.decoder"):
        out = _decode(model, tok, ids, mask, 10, do_sample=False, engine="static", compile=True)
    assert torch.equal(out, expected) and len(calls) == 1
    assert "BackendCompilerFailed" in dec.compile_error and "failed to compile" in caplog.text
    assert torch.equal(_decode(model, tok, ids, mask, 10, do_sample=False, engine="static", compile=True), expected)
    assert len(calls) == 1  # the eager step is kept for these settings
    torch.manual_seed(1)
    sampled = _decode(model, tok, ids, mask, 10, do_sample=True, engine="static", compile=True)
    assert len(calls) == 2 and torch.equal(sampled, expected_sampled)  # new settings: one more (failed) try


def test_auto_engine_choice(tiny, monkeypatch):
    from peft import LoraConfig, get_peft_model

    model = tiny[0]
    monkeypatch.delenv("RLHF_DECODER", raising=False)
    assert decoder.resolve_engine(None, model, torch.device("cpu")) == "eager"
    assert decoder.resolve_engine(None, model, torch.device("cuda")) == "static"
    assert decoder.resolve_engine(None, model, torch.device("cuda"), repetition_penalty=1.1) == "eager"
    monkeypatch.setenv("RLHF_DECODER", "eager")
    assert decoder.resolve_engine(None, model, torch.device("cuda")) == "eager"
    monkeypatch.delenv("RLHF_DECODER")
    from rlhf.models import load_causal_lm

    lora = get_peft_model(load_causal_lm(tiny[0].name_or_path, device="cpu", dtype="float32"),
                          LoraConfig(r=4, target_modules=["q_proj"]))
    assert decoder.resolve_engine(None, lora, torch.device("cuda")) == "eager"  # decode from the merged copy
