"""What the studio says about answer length: reward-model length diagnostics, the over-optimisation
warnings of an evaluation, and the reward / length / KL trend of a policy run. Pure reads over stored
metrics and evaluation summaries (docs/RLHF.md, "Length bias", says how to read each)."""
from __future__ import annotations

from labelapp.models import TrainingRun

# Reward-model diagnostics (rlhf.length, computed on the run's held-out pairs): key, label, what it means.
REWARD_DIAGNOSTICS = (
    ("eval/pairwise_accuracy", "Held-out accuracy", "share of held-out pairs ranked as people ranked them"),
    ("eval/accuracy_chosen_longer", "… where the chosen answer is longer", "a length detector scores 1.0 here"),
    ("eval/accuracy_chosen_shorter", "… where the chosen answer is shorter", "a length detector scores 0.0 here"),
    ("eval/prefers_longer", "Prefers the longer answer", "share of unequal-length pairs; 0.5 = length-blind"),
    ("eval/longer_wins_baseline", "“Longer wins” baseline", "accuracy of always picking the longer answer"),
    ("eval/reward_length_corr", "Correlation of reward with length", "Pearson, over every held-out answer"),
    # a run with a post-hoc length calibration (rlhf.length.fit_length_calibration): the rows above are the
    # calibrated reward's; these say how strong the calibration is and what the reward gave before it
    ("length_calibration/beta", "Length calibration slope",
     "subtracted from the reward per character (per log(1 + characters) with scale log_chars); fitted on "
     "training pairs so the reward prefers longer answers no more often than the labels did"),
    ("eval/uncalibrated/pairwise_accuracy", "Held-out accuracy before calibration", "the same model, reward as trained"),
    ("eval/uncalibrated/accuracy_chosen_shorter", "… where the chosen answer is shorter, before calibration",
     "the same model, reward as trained"),
    ("eval/uncalibrated/prefers_longer", "Prefers the longer answer, before calibration",
     "the same model, reward as trained"),
)
REWARD_KEYS = ("objective/reward",)
LENGTH_KEYS = ("objective/response_length", "policy/response_length")  # mean response tokens per step
KL_KEYS = ("objective/kl",)
NOT_POLICY = (TrainingRun.Kind.SFT, TrainingRun.Kind.REWARD, TrainingRun.Kind.SAMPLE, TrainingRun.Kind.EVALUATE)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def reward_diagnostics(metrics: dict | None) -> list[dict]:
    """Rows (key, label, value, hint) of the length diagnostics present in a run's or version's metrics."""
    metrics = metrics or {}
    rows = []
    for key, label, hint in REWARD_DIAGNOSTICS:
        if _number(metrics.get(key)):
            value = f"{metrics[key]:.3g}" if key == "length_calibration/beta" else f"{metrics[key]:.3f}"
            if key == "eval/accuracy_chosen_longer" and _number(metrics.get("eval/pairs_chosen_longer")):
                value += f" ({metrics['eval/pairs_chosen_longer']} pairs)"
            if key == "eval/accuracy_chosen_shorter" and _number(metrics.get("eval/pairs_chosen_shorter")):
                value += f" ({metrics['eval/pairs_chosen_shorter']} pairs)"
            rows.append({"key": key, "label": label, "value": value, "hint": hint})
    return rows


def length_diagnostics(metrics: dict | None) -> dict | None:
    """The API's view of a reward model's length diagnostics (None when its metrics hold none)."""
    metrics = metrics or {}
    if "eval/accuracy_chosen_longer" not in metrics and "eval/accuracy_chosen_shorter" not in metrics:
        return None
    names = [key for key, _, _ in REWARD_DIAGNOSTICS if "calibrat" not in key] + [
        "eval/pairs", "eval/pairs_chosen_longer", "eval/pairs_chosen_shorter"]
    out = {key.removeprefix("eval/"): metrics.get(key) for key in names}
    out["accuracy"] = out.pop("pairwise_accuracy")
    if _number(metrics.get("length_calibration/beta")):  # the values above are the calibrated reward's
        before = {key.removeprefix("eval/uncalibrated/"): value for key, value in metrics.items()
                  if key.startswith("eval/uncalibrated/")}
        if "pairwise_accuracy" in before:
            before["accuracy"] = before.pop("pairwise_accuracy")
        out["calibration"] = {"beta": metrics["length_calibration/beta"],
                              **{key.removeprefix("length_calibration/"): metrics[key]
                                 for key in ("length_calibration/labels_prefer_longer",
                                             "length_calibration/model_prefers_longer",
                                             "length_calibration/calibrated_prefers_longer")
                                 if _number(metrics.get(key))},
                              "uncalibrated": before}
    return {**out, "length_unit": "characters"}


def reward_length_text(metrics: dict | None) -> str:
    """One line for the model registry: accuracy where the chosen answer is longer / shorter, the share
    preferring the longer answer against the "longer wins" baseline, and the reward-length correlation."""
    m = metrics or {}
    if not _number(m.get("eval/accuracy_chosen_shorter")) and not _number(m.get("eval/accuracy_chosen_longer")):
        return ""
    parts = []

    def show(key):
        return f"{m[key]:.2f}" if _number(m.get(key)) else "—"

    parts.append(f"chosen longer {show('eval/accuracy_chosen_longer')} / shorter {show('eval/accuracy_chosen_shorter')}")
    if _number(m.get("eval/prefers_longer")):
        parts.append(f"prefers longer {show('eval/prefers_longer')} (longer wins {show('eval/longer_wins_baseline')})")
    if _number(m.get("eval/reward_length_corr")):
        parts.append(f"r(reward, length) {m['eval/reward_length_corr']:.2f}")
    return " · ".join(parts)


def held_out_warnings(summary: dict) -> list[dict]:
    """Over-optimisation warnings for one blind evaluation (its summary from labelapp.selectors.stats).

    A side (the reward model's scores, or the human judgments) warns when its raw win-rate is clearly
    above one half (the 95% interval's lower end above 0.5: the new policy "won") while its
    length-controlled win-rate is not (its interval reaches down to 0.5 or below): the gain is what the
    new policy's answer length explains, the signature of reward hacking by verbosity."""
    warnings = []
    lengths = summary.get("lengths") or {}
    for side, who in (("reward_model", "The reward model prefers"), ("human", "Blind judgments prefer")):
        raw, controlled = summary[side], summary["length_controlled"][side]
        if raw["n"] and raw["low"] > 0.5 and controlled["win_rate"] is not None and controlled["low"] <= 0.5:
            text = (f"{who} the new policy ({raw['win_rate']:.1%}, interval from {raw['low']:.1%}) but not once "
                    f"answer length is held equal ({controlled['win_rate']:.1%}, interval from {controlled['low']:.1%})")
            if lengths.get("candidate") is not None and lengths.get("baseline"):
                text += (f"; its answers average {lengths['candidate']:.0f} characters against the parent's "
                         f"{lengths['baseline']:.0f}")
            warnings.append({"side": side, "kind": "length", "text": text + ": the gain may be verbosity."})
    return warnings


def _series(history: list[dict], keys: tuple[str, ...]) -> tuple[str | None, list[tuple[float, float]]]:
    for key in keys:
        points = [(p.get("step", i), p[key]) for i, p in enumerate(history) if _number(p.get(key))]
        if points:
            return key, points
    return None, []


def _pearson(xs: list[float], ys: list[float]) -> float | None:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return sxy / (sxx * syy) ** 0.5 if sxx > 0 and syy > 0 else None


def policy_trend(history: list[dict]) -> dict | None:
    """Reward, mean response length and KL of a policy run, first quarter of its steps against the last.

    `watch` is True when the reward rose while the responses grew by 20% or more and the two moved
    together across steps (correlation 0.5 or more): a hint to check the held-out, length-controlled
    comparison, not a verdict (a policy may rightly learn to say more)."""
    _, reward = _series(history, REWARD_KEYS)
    length_key, length = _series(history, LENGTH_KEYS)
    _, kl = _series(history, KL_KEYS)
    if len(reward) < 4 or len(length) < 4:
        return None
    by_step = dict(length)
    paired = [(r, by_step[s]) for s, r in reward if s in by_step]
    quarter = max(1, len(reward) // 4)

    def ends(points):
        values = [v for _, v in points]
        return sum(values[:quarter]) / quarter, sum(values[-quarter:]) / quarter

    (r0, r1), (l0, l1) = ends(reward), ends(length)
    corr = _pearson([r for r, _ in paired], [length for _, length in paired]) if len(paired) >= 4 else None
    text = (f"Over {len(reward)} steps the reward went from {r0:.3g} to {r1:.3g} and the mean response length "
            f"from {l0:.0f} to {l1:.0f} tokens")
    if corr is not None:
        text += f" (correlation across steps {corr:.2f})"
    if len(kl) >= 2:
        k0, k1 = ends(kl) if len(kl) >= 4 else (kl[0][1], kl[-1][1])
        text += f"; KL from {k0:.3g} to {k1:.3g}"
    watch = r1 > r0 and l0 > 0 and l1 >= 1.2 * l0 and corr is not None and corr >= 0.5
    if watch:
        text += ": the reward rose with the length, so check the length-controlled evaluation"
    return {"text": text + ".", "watch": watch, "reward": [r0, r1], "length": [l0, l1], "correlation": corr,
            "length_key": length_key}


def run_length_watch(run: TrainingRun, round_summary: dict | None = None) -> dict:
    """What the run page shows about length: the reward model's diagnostics (reward runs), the policy's
    trend (policy runs: PPO, DPO and the other policy methods) and the held-out warnings of the run's round evaluation (policy and evaluation
    runs; `round_summary` is labelapp.selectors.stats.evaluation_summary of the run's round)."""
    out = {"diagnostics": [], "trend": None, "warnings": []}
    if run.kind == TrainingRun.Kind.REWARD:
        out["diagnostics"] = reward_diagnostics(run.result)
    policy = run.kind not in NOT_POLICY
    if policy:
        out["trend"] = policy_trend(run.metrics or [])
    if (policy or run.kind == TrainingRun.Kind.EVALUATE) and round_summary:
        out["warnings"] = [w["text"] for w in round_summary.get("warnings", [])]
    return out
