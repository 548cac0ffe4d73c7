"""Runs launched through `accelerate launch` (workers/launch.py): progress, cancel, errors, and no orphans.

CPU only here, so the launched runs use one process (`accelerate launch --cpu --num_processes 1`): the
plumbing is the same as with N GPUs (files, progress lines, stop file, metadata, process group), the
N-process placement itself is accelerate's.
"""
import signal
import subprocess
import time

import pytest

from rlhf import Cancelled
from rlhf.data import Demonstration, PreferencePair
from tests.workers.conftest import wait_for
from workers import launch

DEMOS = [Demonstration(f"Tell me a fact about cats, number {i}.", "Cats sleep for most of the day and purr.")
         for i in range(16)]
PAIRS = [PreferencePair(f"Tell me about {t}.", f"A helpful answer about {t}.", f"No. Wrong about {t}.")
         for t in ("cats", "dogs", "the sea", "plants") for _ in range(2)]


def sft_config(tmp_path, tiny_dir, **kw):
    from rlhf.sft import SFTRunConfig

    base = dict(output_dir=str(tmp_path / "sft"), model=tiny_dir, max_steps=6, per_device_batch_size=4,
                learning_rate=3e-3, max_length=512, save_steps=0, seed=0)
    return SFTRunConfig(**{**base, **kw})


def test_who_launches(settings):
    settings.RUN_LAUNCH, settings.RUN_PROCESSES = "auto", 1
    assert launch.processes() == 0  # in-process
    settings.RUN_PROCESSES = 4
    assert launch.processes() == 4
    settings.RUN_LAUNCH = "inprocess"
    assert launch.processes() == 0
    settings.RUN_LAUNCH, settings.RUN_PROCESSES = "accelerate", 1
    assert launch.processes() == 1


def test_several_processes_without_gpus_is_a_clear_error(tmp_path, tiny_dir, settings):
    settings.RUN_LAUNCH, settings.RUN_PROCESSES = "auto", 2
    with pytest.raises(launch.LaunchFailed, match="RUN_PROCESSES=2 needs GPUs"):
        launch.train("sft", sft_config(tmp_path, tiny_dir), DEMOS, lambda *a: None)
    assert not (tmp_path / "sft" / "model").exists()


def test_launched_sft_reports_every_step_and_returns_its_artifacts(tmp_path, tiny_dir, settings):
    from rlhf.models import load_causal_lm

    settings.RUN_LAUNCH, settings.RUN_PROCESSES = "accelerate", 1
    seen = []
    art = launch.train("sft", sft_config(tmp_path, tiny_dir), DEMOS, lambda s, t, m: seen.append((s, t, m)))
    assert [s for s, _, _ in seen] == [1, 2, 3, 4, 5, 6] and {t for _, t, _ in seen} == {6}
    assert "loss/train" in seen[-1][2]
    assert art.status == "succeeded" and art.global_step == 6
    assert load_causal_lm(art.model_dir) is not None
    assert (tmp_path / "sft" / "launch" / "data.jsonl").read_text().count("\n") == len(DEMOS)


def test_launched_reward_model_trains_on_the_pairs_it_was_given(tmp_path, tiny_dir, settings):
    from rlhf.reward import RewardRunConfig

    settings.RUN_LAUNCH = "accelerate"
    config = RewardRunConfig(output_dir=str(tmp_path / "rm"), model=tiny_dir, max_steps=2, per_device_batch_size=4,
                             max_length=512, save_steps=0, eval_fraction=0.25, seed=0)
    art = launch.train("reward", config, PAIRS, lambda *a: None)
    assert art.status == "succeeded" and art.metrics["eval/pairs"] == 2


def test_cancel_stops_every_rank_at_a_step_and_keeps_a_checkpoint(tmp_path, tiny_dir, settings):
    settings.RUN_LAUNCH = "accelerate"
    seen = []

    def progress(step, total, metrics):
        seen.append(step)
        if step >= 2:
            raise Cancelled("cancel requested")

    art = launch.train("sft", sft_config(tmp_path, tiny_dir, max_steps=200), DEMOS, progress)
    assert art.status == "cancelled" and art.model_dir is None
    assert 2 <= art.global_step < 200
    assert (tmp_path / "sft" / "launch" / "stop").exists()
    assert list((tmp_path / "sft").glob("checkpoint-*")), "the cancelled run saved no checkpoint"


def test_a_failing_launch_says_why(tmp_path, settings):
    settings.RUN_LAUNCH = "accelerate"
    config = sft_config(tmp_path, str(tmp_path / "no-such-model"))
    with pytest.raises(launch.LaunchFailed) as err:
        launch.train("sft", config, DEMOS, lambda *a: None)
    assert "exited with status" in str(err.value) and "no-such-model" in str(err.value)
    assert not (tmp_path / "sft" / "model").exists()


def rank_processes(config_path) -> list[str]:
    out = subprocess.run(["pgrep", "-f", f"rlhf sft --config {config_path}"], capture_output=True, text=True)
    return out.stdout.split()


@pytest.mark.django_db(transaction=True)
def test_a_killed_worker_leaves_no_training_process_behind(tmp_path, tiny_dir, start_worker):
    """The worker (a real Celery process) launches the run; SIGKILL it: the launcher and the rank die too."""
    from labelapp.services.runs import run_create
    from tests.conftest import add_member, make_project, make_prompt
    from workers.simulate import approve_demonstrations, simulate

    project = make_project()
    project.base_model = tiny_dir
    project.save()
    add_member(project, role="admin")
    for i in range(4):
        make_prompt(project, text=f"Tell me about cats ({i}).", reference="Cats purr when they are happy.")
    simulate(project=project, annotators=2, queues=["write"])
    approve_demonstrations(project)  # SFT trains on approved demonstrations
    run = run_create(project=project, kind="sft", params={"max_steps": 400, "per_device_batch_size": 2,
                                                            "max_length": 512, "save_steps": 0})
    worker = start_worker(RUN_LAUNCH="accelerate")

    def stepping():
        run.refresh_from_db()
        return run.step >= 2

    wait_for(stepping, 180, "the launched run to report steps through the worker", worker)
    config_path = tmp_path / "runs" / str(run.pk) / "launch" / "config.json"  # the worker's DATA_DIR is tmp_path
    assert config_path.is_file()
    assert rank_processes(config_path), "no launched rlhf process found"
    worker.stop(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while rank_processes(config_path) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not rank_processes(config_path), "the launched training outlived its worker"


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()  # a zombie waiting for its reaper is dead
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("how", ["launcher", "rank"])
def test_parent_death_signal_takes_the_child_down(tmp_path, how):
    """The launcher asks for the signal in launch.GUARD, each rank through `--die-with-parent`; neither may
    outlive its parent even when it never writes to the (broken) pipe again."""
    import sys

    ready = tmp_path / "child.pid"
    sleeper = f"import os, time; open({str(ready)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    if how == "launcher":  # the worker starts accelerate's launcher through launch.GUARD
        (tmp_path / "sleeper.py").write_text(sleeper)
        child = launch.GUARD.format(module="sleeper")
    else:  # a rank asks for it itself (rlhf CLI --die-with-parent)
        child = "from rlhf.__main__ import die_with_parent; die_with_parent(); " + sleeper
    spawn = (f"import os, subprocess, sys, time; os.environ['PYTHONPATH'] = os.pathsep.join([{str(tmp_path)!r}, "
             f"os.getcwd()]); subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", spawn], cwd=launch.__file__.rsplit("/workers/", 1)[0])
    deadline = time.monotonic() + 60
    while not (ready.exists() and ready.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    pid = int(ready.read_text())
    assert alive(pid)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid), f"the child ({how}) outlived its parent"


def test_policy_gradient_runs_stay_in_the_workers_process(settings, monkeypatch):
    """PPO (and RLOO/GRPO, by their config class) has no multi-process mode: launch.train runs it in the
    worker's process even where SFT, reward and DPO runs are launched over several processes."""
    from rlhf import ppo

    settings.RUN_LAUNCH, settings.RUN_PROCESSES = "accelerate", 2
    prompts = [[{"role": "user", "content": "Tell me about cats."}]]
    calls = []
    monkeypatch.setattr(ppo, "train", lambda config, records, progress=None: calls.append((config, records)) or "done")
    monkeypatch.setattr(launch, "launched", lambda *a, **k: pytest.fail("a PPO run was launched"))
    assert launch.train("ppo", "the config", prompts, lambda *a: None) == "done"
    assert calls == [("the config", prompts)]
