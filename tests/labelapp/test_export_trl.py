"""An exported file loads with datasets.load_dataset("json", …) straight into TRL's trainers."""
import pytest
from rest_framework.test import APIClient

from labelapp.models import Queue
from labelapp.services.labels import demonstration_submit, ranking_submit
from labelapp.services.queue import task_claim
from tests.conftest import add_member, make_project, make_prompt, make_task

pytestmark = pytest.mark.django_db


@pytest.fixture
def exported(tmp_path):
    project = make_project(k=3, overlap=1)
    annotator, reviewer = add_member(project), add_member(project, role="reviewer")
    for i in range(4):
        prompt = make_prompt(project, text=f"Tell me a fact about cats, number {i}.")
        make_task(project, prompt=prompt, texts=["Cats purr when happy.", "Cats sleep a lot.", "No."])
        lease = task_claim(project=project, user=annotator, queue=Queue.RANK)
        ids = sorted(lease.ranking_task.completions.values_list("id", flat=True))
        ranking_submit(assignment_id=lease.pk, user=annotator, order=[[i] for i in ids])
        write = task_claim(project=project, user=annotator, queue=Queue.WRITE)
        demonstration_submit(assignment_id=write.pk, user=annotator, text="Cats have whiskers.")
    chat = make_prompt(project, messages=[{"role": "user", "content": "I have a cat."},
                                          {"role": "assistant", "content": "Lovely!"},
                                          {"role": "user", "content": "What is its best sleeping location?"}])
    make_task(project, prompt=chat, texts=["Certainly! A warm box.", "On the roof.", "No."])
    lease = task_claim(project=project, user=annotator, queue=Queue.RANK)
    by_text = {c.text: c.pk for c in lease.ranking_task.completions.all()}
    ranking_submit(assignment_id=lease.pk, user=annotator,
                   order=[[by_text["Certainly! A warm box."]], [by_text["On the roof."]], [by_text["No."]]])
    client = APIClient()
    client.force_authenticate(reviewer)
    files = {}
    for name, kind, params in [("pairs", "pairs", {"style": "conversational"}), ("plain", "pairs", {}),
                               ("demonstrations", "demonstrations", {}), ("kto", "kto", {})]:
        response = client.get(f"/api/v1/projects/{project.pk}/exports/{kind}/", params)
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(b"".join(response.streaming_content))
        files[name] = str(path)
    return files


def test_exports_train_with_trl(exported, tmp_path):
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

    from rlhf.testing import tiny_checkpoint

    path = tiny_checkpoint(tmp_path / "tiny")
    tokenizer = AutoTokenizer.from_pretrained(path)
    common = dict(max_steps=1, per_device_train_batch_size=2, report_to=[], bf16=False, use_cpu=True,
                  save_strategy="no", logging_steps=1)
    pairs = load_dataset("json", data_files=exported["pairs"], split="train")
    assert len(pairs) == 5 * 3 and set(pairs.column_names) == {"prompt", "chosen", "rejected"}

    reward_model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    reward_model.config.pad_token_id = tokenizer.pad_token_id
    RewardTrainer(model=reward_model, processing_class=tokenizer, train_dataset=pairs,
                  args=RewardConfig(output_dir=str(tmp_path / "rm"), max_length=512, **common)).train()

    policy = AutoModelForCausalLM.from_pretrained(path)
    DPOTrainer(model=policy, processing_class=tokenizer, train_dataset=pairs,
               args=DPOConfig(output_dir=str(tmp_path / "dpo"), max_length=512, **common)).train()

    demos = load_dataset("json", data_files=exported["demonstrations"], split="train")
    assert demos[0]["messages"][-1] == {"role": "assistant", "content": "Cats have whiskers."}
    SFTTrainer(model=AutoModelForCausalLM.from_pretrained(path), processing_class=tokenizer, train_dataset=demos,
               args=SFTConfig(output_dir=str(tmp_path / "sft"), max_length=512, **common)).train()

    # plain style: TRL joins prompt and reply as they are; a chat prompt ends with the assistant's cue
    plain = load_dataset("json", data_files=exported["plain"], split="train")
    chat_rows = [r for r in plain if r["prompt"].startswith("Human: I have a cat.")]
    assert chat_rows[0]["prompt"].endswith("\n\nHuman: What is its best sleeping location?\n\nAssistant:")
    assert chat_rows[0]["chosen"] == " Certainly! A warm box."
    assert [r["prompt"] for r in plain if not r["prompt"].startswith("Human:")][0] == "Tell me a fact about cats, number 0."
    trainer = RewardTrainer(model=AutoModelForSequenceClassification.from_pretrained(path, num_labels=1),
                            processing_class=tokenizer, train_dataset=plain,
                            args=RewardConfig(output_dir=str(tmp_path / "rm-plain"), max_length=512, **common))
    seen = [tokenizer.decode(row["chosen_ids"]) for row in trainer.train_dataset]
    joined = [text for text in seen if "sleeping location" in text]
    assert joined and "location?\n\nAssistant: Certainly! A warm box." in joined[0], joined
    assert not any("location?Certainly" in text for text in seen)
    trainer.train()

    kto = load_dataset("json", data_files=exported["kto"], split="train")
    assert set(kto.column_names) == {"prompt", "completion", "label"} and sorted(set(kto["label"])) == [False, True]
