from __future__ import annotations

from django.db import migrations


def seed(apps, schema_editor):
    from gallery.categories import categories_ensure

    categories_ensure(apps.get_model("gallery", "Category"), apps.get_model("gallery", "Subcategory"))


def unseed(apps, schema_editor):
    apps.get_model("gallery", "Subcategory").objects.all().delete()
    apps.get_model("gallery", "Category").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [("gallery", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
