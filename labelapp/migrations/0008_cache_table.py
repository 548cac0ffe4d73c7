"""The database cache's table (config.settings.CACHE_TABLE), used for the shared log-in and token
throttles when no REDIS_URL is set. Created whatever the cache backend now is, so that switching
to the database cache later needs no extra step."""
from django.conf import settings
from django.db import migrations


def create_cache_table(apps, schema_editor):
    from django.core.management.commands.createcachetable import Command

    command = Command()
    command.verbosity = 0
    command.create_table(schema_editor.connection.alias, settings.CACHE_TABLE, dry_run=False)


def drop_cache_table(apps, schema_editor):
    schema_editor.execute(f"DROP TABLE IF EXISTS {schema_editor.quote_name(settings.CACHE_TABLE)}")


class Migration(migrations.Migration):

    dependencies = [
        ("labelapp", "0007_prompt_fidelity_categories_metadata"),
    ]

    operations = [migrations.RunPython(create_cache_table, drop_cache_table)]
