import hashlib

from django.db import migrations


def rehash_one_user_turn(apps, schema_editor):
    """A chat of one user turn now hashes as its text (labelapp.formats.prompts.prompt_hash), so
    the same prompt given as text or as that chat is one prompt. Prompts stored that way get the
    new hash, except where the project already holds the same text as a text prompt (the duplicate
    this fixes): that one keeps its old hash, and the text prompt is the one new imports match."""
    Prompt = apps.get_model("labelapp", "Prompt")
    changed = []
    for prompt in Prompt.objects.filter(messages__isnull=False).only("pk", "project_id", "messages", "content_hash").iterator(
        chunk_size=2000
    ):
        turns = prompt.messages
        if not (isinstance(turns, list) and len(turns) == 1 and isinstance(turns[0], dict) and turns[0].get("role") == "user"):
            continue
        content = turns[0].get("content") or ""
        digest = hashlib.sha256(content.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")).hexdigest()
        if digest != prompt.content_hash:
            prompt.content_hash = digest
            changed.append(prompt)
    taken = set()
    for start in range(0, len(changed), 1000):
        chunk = changed[start : start + 1000]
        taken |= set(Prompt.objects.filter(content_hash__in=[p.content_hash for p in chunk]).values_list("project_id", "content_hash"))
    kept = []
    for prompt in changed:
        key = (prompt.project_id, prompt.content_hash)
        if key not in taken:
            taken.add(key)
            kept.append(prompt)
    Prompt.objects.bulk_update(kept, ["content_hash"], batch_size=1000)


class Migration(migrations.Migration):

    dependencies = [
        ("labelapp", "0018_merge_20261130_1040"),
    ]

    operations = [
        migrations.RunPython(rehash_one_user_turn, migrations.RunPython.noop),
    ]
