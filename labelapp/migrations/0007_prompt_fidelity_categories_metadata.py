import hashlib
import json

from django.db import migrations, models

import labelapp.models.labels


def rehash_prompts(apps, schema_editor):
    """Content hashes now normalise only line endings (they used to collapse all whitespace).
    Prompts that were distinct stay distinct: the old rule was the coarser one."""
    Prompt = apps.get_model("labelapp", "Prompt")

    def lf(value):
        return value.replace("\r\n", "\n").replace("\r", "\n")

    changed = []
    for prompt in Prompt.objects.only("pk", "text", "messages", "content_hash").iterator(chunk_size=2000):
        if prompt.messages:
            canonical = json.dumps([[m["role"], lf(m["content"])] for m in prompt.messages], ensure_ascii=False)
        else:
            canonical = lf(prompt.text)
        digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        if digest != prompt.content_hash:
            prompt.content_hash = digest
            changed.append(prompt)
    Prompt.objects.bulk_update(changed, ["content_hash"], batch_size=1000)


class Migration(migrations.Migration):

    dependencies = [
        ('labelapp', '0006_label_withdraw'),
    ]

    operations = [
        migrations.AddField(
            model_name='project',
            name='categories',
            field=models.JSONField(blank=True, default=labelapp.models.labels.default_categories, help_text='The prompt categories of this project, e.g. ["coding", "math"] (default: InstructGPT\'s ten).'),
        ),
        migrations.AddField(
            model_name='prompt',
            name='metadata',
            field=models.JSONField(blank=True, default=dict, help_text="Free-form JSON object from the prompt's source (ids, topics…), kept as given."),
        ),
        migrations.AlterField(
            model_name='prompt',
            name='category',
            field=models.CharField(blank=True, default='other', help_text="One of the project's categories (Project.categories); empty: none.", max_length=64),
        ),
        migrations.AlterField(
            model_name='prompt',
            name='content_hash',
            field=models.CharField(help_text='sha256 of the content with only line endings normalised: re-imports dedupe.', max_length=64),
        ),
        migrations.RunPython(rehash_prompts, migrations.RunPython.noop),
    ]
