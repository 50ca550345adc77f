"""The admin's gallery upload (/people/gallery/import/) runs the `import_gallery` import on the uploaded
files and reports each refused row by its line."""

from __future__ import annotations

import io
import zipfile

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from gallery.models import Image, Prompt
from tests.admin_pages.uploads import SIX, manifest_zip
from tests.gallery.conftest import png_bytes

pytestmark = pytest.mark.django_db
URL = "/people/gallery/import/"


@pytest.fixture
def admin_client(client, make_user):
    from gallery.services.generators import generators_ensure_itercomp_gallery

    generators_ensure_itercomp_gallery()
    client.force_login(make_user("admin"))
    return client


def _zip(name: str, data: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="application/zip")


def test_a_zipped_manifest_is_imported_and_a_bad_row_is_reported_by_its_line(admin_client):
    data = manifest_zip(["a red cup and a blue book", "a green bowl"], bad_line=True)
    response = admin_client.post(URL, {"files": [_zip("gallery.zip", data)], "format": "manifest"})
    assert response.status_code == 200
    page = response.content.decode()
    assert "12/13" in page and 'data-where="line 14"' in page and "missing.png" in page
    assert Prompt.objects.filter(text__in=["a red cup and a blue book", "a green bowl"]).count() == 2
    assert Image.objects.count() == 12
    # The same upload again adds nothing.
    again = admin_client.post(URL, {"files": [_zip("gallery.zip", data)], "format": "manifest"})
    assert '<dd data-count="images_created">0</dd>' in again.content.decode()
    assert Image.objects.count() == 12


def test_the_manifest_and_its_images_may_be_uploaded_as_loose_files(admin_client):
    files = [SimpleUploadedFile("m.jsonl", b"", content_type="application/json")]
    records = []
    for g, slug in enumerate(SIX[:2]):
        files.append(SimpleUploadedFile(f"{slug}.png", png_bytes(500 + g), content_type="image/png"))
        records.append(
            f'{{"prompt": "a tall tree", "category": "shape", "generator": "{slug}", "image": "{slug}.png"}}'
        )
    files[0] = SimpleUploadedFile("m.jsonl", "\n".join(records).encode(), content_type="application/json")
    response = admin_client.post(URL, {"files": files, "format": "manifest"}, headers={"HX-Request": "true"})
    assert response.status_code == 200
    body = response.content.decode()
    # An htmx request gets the report alone, to swap in under the form.
    assert body.lstrip().startswith('<section id="import-report"') and "2/2" in body
    assert Image.objects.filter(prompt__text="a tall tree").count() == 2


def test_a_zip_whose_member_leaves_the_archive_is_refused_before_anything_is_written(admin_client, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("manifest.csv", "prompt,category,generator,image\na cat,color,sdxl,../evil.png\n")
        archive.writestr("../evil.png", png_bytes(1))
    response = admin_client.post(URL, {"files": [_zip("evil.zip", buffer.getvalue())], "format": "manifest"})
    assert response.status_code == 400
    assert "paths must stay inside the archive" in response.content.decode()
    assert not Prompt.objects.filter(text="a cat").exists()


def test_an_upload_without_exactly_one_manifest_says_which_files_it_found(admin_client):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.csv", "prompt,generator,image\n")
        archive.writestr("b.csv", "prompt,generator,image\n")
    response = admin_client.post(URL, {"files": [_zip("two.zip", buffer.getvalue())], "format": "manifest"})
    assert response.status_code == 400 and "found: a.csv, b.csv" in response.content.decode()


def test_annotators_and_researchers_cannot_upload_a_gallery(client, make_user):
    for role in ("annotator", "researcher"):
        client.force_login(make_user(role))
        data = manifest_zip(["a red cup"])
        response = client.post(URL, {"files": [_zip("g.zip", data)], "format": "manifest"})
        assert response.status_code == 403
    assert not Prompt.objects.filter(text="a red cup").exists()


def test_a_zip_holding_a_link_is_refused(admin_client):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("manifest.csv", "prompt,category,generator,image\na dog,color,sdxl,img.png\n")
        link = zipfile.ZipInfo("img.png")
        link.external_attr = 0o120777 << 16  # a symlink whose target is the member's content
        archive.writestr(link, "/etc/passwd")
    response = admin_client.post(URL, {"files": [_zip("link.zip", buffer.getvalue())], "format": "manifest"})
    assert response.status_code == 400 and "links are refused" in response.content.decode()
    assert not Prompt.objects.filter(text="a dog").exists()


def test_a_zip_that_unpacks_past_the_limit_is_refused_before_the_import(admin_client, monkeypatch):
    from annotation.services import gallery_uploads

    monkeypatch.setattr(gallery_uploads, "MAX_UNPACKED_BYTES", 10_000)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.csv", "prompt,category,generator,image\na bomb,color,sdxl,zeros.png\n")
        archive.writestr("zeros.png", b"\0" * 50_000)  # compresses to a few hundred bytes
    data = buffer.getvalue()
    assert len(data) < 10_000
    response = admin_client.post(URL, {"files": [_zip("bomb.zip", data)], "format": "manifest"})
    assert response.status_code == 400 and "import it with the CLI" in response.content.decode()
    assert not Prompt.objects.filter(text="a bomb").exists()
