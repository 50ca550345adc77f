"""Beat's database scheduler keeps every entry it was ever given; the two per-app job checks were replaced
by ``jobs-reconcile`` (and ``training-advance-ranked-rounds``), so their rows would keep sending tasks that
no longer exist."""

from django.db import migrations

RETIRED = ("training-heartbeat-check", "reconcile-queued-work")


def retire(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(name__in=RETIRED).delete()


class Migration(migrations.Migration):
    dependencies = [("django_celery_beat", "0019_alter_periodictasks_options")]

    operations = [migrations.RunPython(retire, migrations.RunPython.noop)]
