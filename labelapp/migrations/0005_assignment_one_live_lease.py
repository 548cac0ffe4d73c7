from django.conf import settings
from django.db import migrations, models


def keep_newest_active_lease(apps, schema_editor):
    """Before the one-active-lease index: of a user's several active leases in one queue (left by
    parallel claims), keep the newest and mark the others expired, which frees their items."""
    Assignment = apps.get_model("labelapp", "Assignment")
    seen = set()
    stale = []
    rows = Assignment.objects.filter(status="active").order_by("-leased_at", "-id")
    for pk, user_id, project_id, queue in rows.values_list("pk", "user_id", "project_id", "queue").iterator():
        key = (user_id, project_id, queue)
        if key in seen:
            stale.append(pk)
        seen.add(key)
    Assignment.objects.filter(pk__in=stale).update(status="expired")


class Migration(migrations.Migration):

    dependencies = [
        ('labelapp', '0004_blind_evaluation'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AlterField(
            model_name='assignment',
            name='status',
            field=models.CharField(choices=[('active', 'Leased'), ('submitted', 'Submitted'), ('skipped', 'Skipped'), ('expired', 'Lease expired')], default='active', max_length=16),
        ),
        migrations.RunPython(keep_newest_active_lease, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name='assignment',
            constraint=models.UniqueConstraint(condition=models.Q(('status', 'active')), fields=('user', 'project', 'queue'), name='assignment_one_active_per_queue'),
        ),
    ]
