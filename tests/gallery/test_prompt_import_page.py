"""The admin's prompt-file upload (/people/prompts/import/) follows the same rules as `import_prompts`."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from gallery.models import Prompt

pytestmark = pytest.mark.django_db


def _upload(name: str, text: str) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, text.encode("utf-8"), content_type="text/plain")


def test_an_uploaded_file_can_pin_its_prompts_to_the_test_split(client, make_user):
    client.force_login(make_user("admin"))
    body = "a red circle to the left of a blue square\na green cube on a yellow table\n"
    response = client.post(
        "/people/prompts/import/", {"files": [_upload("spatial_val.txt", body)], "split": "test"}
    )
    assert response.status_code == 200
    prompts = Prompt.objects.filter(text__in=body.split("\n"))
    assert prompts.count() == 2 and set(prompts.values_list("split", "split_pinned")) == {("test", True)}


def test_a_file_breaking_the_prompt_rules_is_reported_by_line_and_nothing_of_it_is_written(client, make_user):
    client.force_login(make_user("admin"))
    before = Prompt.objects.count()
    body = "a fine prompt\na prompt with a NUL \x00 byte\n" + "x" * 1001 + "\n"
    response = client.post("/people/prompts/import/", {"files": [_upload("color_train.txt", body)]})
    assert response.status_code == 400
    page = response.content.decode()
    assert "line 2" in page and "line 3" in page
    assert Prompt.objects.count() == before


def test_an_unknown_split_is_refused(client, make_user):
    client.force_login(make_user("admin"))
    response = client.post(
        "/people/prompts/import/", {"files": [_upload("color_train.txt", "a red cube\n")], "split": "holdout"}
    )
    assert response.status_code == 400 and "split must be one of" in response.content.decode()
    assert not Prompt.objects.filter(text="a red cube").exists()
