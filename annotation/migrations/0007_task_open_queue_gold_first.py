from django.db import migrations, models


class Migration(migrations.Migration):
    # A gold turn walks both pools in one statement, gold first: the mirror of task_open_queue's order
    # (annotation/services/claims.py, _claim_order).

    dependencies = [
        ('annotation', '0006_active_selection'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='rankingtask',
            index=models.Index(
                condition=models.Q(('status', 'open')),
                fields=['-is_gold', '-priority', 'id'],
                name='task_open_queue_gold_first',
            ),
        ),
    ]
