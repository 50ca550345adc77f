"""Exports too big for one request run as ExportJobs in the real worker, with a progress bar that stops
polling (HTTP 286) and a download link."""

from __future__ import annotations

import io
import re
import zipfile

import pyarrow.parquet as pq
import pytest
from django.core.files.storage import default_storage

from annotation.exporters.filters import ExportFilters
from annotation.models import ExportJob
from annotation.services.export import ExportSpec, export_job_create, export_job_run
from jobs.models import JobStatus


def _body(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_api_job_exports_parquet_in_the_worker_and_serves_the_file(
    celery_worker_process, researcher_client, dataset, wait_for
):
    response = researcher_client.post(
        "/api/exports/",
        {"kind": "pairs", "format": "parquet", "filters": {"category": ["spatial"]}},
        content_type="application/json",
    )
    assert response.status_code == 202
    job_id = response.json()["id"]

    def finished():
        data = researcher_client.get(f"/api/exports/{job_id}/").json()
        return data if data["status"] in ("done", "failed") else None

    data = wait_for(finished, timeout=40, message="the export job")
    assert data["status"] == "done", data["error"]
    assert (data["rows_done"], data["rows_total"], data["progress"]) == (45, 45, 1.0)
    download = researcher_client.get(data["download_url"])
    assert download.status_code == 200
    assert pq.read_table(io.BytesIO(_body(download))).num_rows == 45


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_research_page_runs_a_hugging_face_export_with_a_polling_progress_bar(
    celery_worker_process, researcher_client, dataset, wait_for, tmp_path
):
    started = researcher_client.post(
        "/research/export/jobs/", {"kind": "pairs", "format": "hf", "split": "train"}, HTTP_HX_REQUEST="true"
    )
    assert started.status_code == 200
    html = started.content.decode()
    job_id = int(re.search(r'id="job-(\d+)"', html).group(1))
    assert f'hx-get="/research/export/jobs/{job_id}/"' in html and 'hx-trigger="every 1s"' in html

    def stopped():
        r = researcher_client.get(f"/research/export/jobs/{job_id}/", HTTP_HX_REQUEST="true")
        return r if r.status_code == 286 else None

    final = wait_for(stopped, timeout=60, message="polling to stop")
    page = final.content.decode()
    assert 'data-status="done"' in page and "hx-get" not in page
    link = re.search(r'href="(/research/export/jobs/\d+/download/)"', page).group(1)
    archive = zipfile.ZipFile(io.BytesIO(_body(researcher_client.get(link))))
    archive.extractall(tmp_path / "hf")
    import datasets

    loaded = datasets.load_dataset(
        "imagefolder", data_dir=str(tmp_path / "hf"), cache_dir=str(tmp_path / "c")
    )
    assert loaded["train"].num_rows == 45  # 3 train tasks x 15


@pytest.mark.django_db
def test_a_job_runs_once_and_a_failure_is_recorded_not_left_running(dataset, make_user, settings):
    spec = ExportSpec(kind="pairs", format="hf", filters=ExportFilters.from_mapping({"split": "val"}))
    job = export_job_create(requested_by=make_user("researcher"), spec=spec)
    # Break the export: one image file vanished from storage.
    default_storage.delete(dataset.tasks[1].task.images.first().file.name)
    assert export_job_run(job_id=job.pk) == JobStatus.FAILED
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and "FileNotFoundError" in job.error and job.finished_at
    # A redelivered message for a finished job claims nothing.
    assert export_job_run(job_id=job.pk) == "not claimed"
    assert ExportJob.objects.get(pk=job.pk).attempts == 1


@pytest.mark.django_db
def test_other_researchers_cannot_see_or_download_a_job(client, make_user, dataset):
    spec = ExportSpec(kind="pairs", format="csv", filters=ExportFilters())
    owner = make_user("researcher")
    job = export_job_create(requested_by=owner, spec=spec)
    assert export_job_run(job_id=job.pk) == JobStatus.DONE
    client.force_login(make_user("researcher"))
    assert client.get(f"/research/export/jobs/{job.pk}/").status_code == 404
    assert client.get(f"/api/exports/{job.pk}/download/").status_code == 404
    client.force_login(owner)
    assert client.get(f"/api/exports/{job.pk}/download/").status_code == 200
    client.force_login(make_user("admin"))
    assert client.get(f"/research/export/jobs/{job.pk}/download/").status_code == 200
