"""Generators in the browser: researchers map theirs to IterComp's six names and the IterComp export uses
the mapping; admins register generators (the browser side of `register_generator`)."""

from __future__ import annotations

import json

import pytest

from annotation.exporters.rankings import itercomp_model_name
from annotation.services.consensus import consensus_recompute
from gallery.models import Generator
from tests.consensus import factories as f

pytestmark = pytest.mark.django_db

WORLD = ("world-a", "world-b", "world-c", "world-d", "world-e", "world-f")
SIX = ("flux", "sd3", "sdxl", "sd15", "rpg", "instancediffusion")


@pytest.fixture
def ranked_world_task(make_user, settings):
    settings.CONSENSUS_MAX_RANKINGS = 3
    p = f.prompt("a red cube left of a blue ball", "spatial")
    t, ids = f.task(p, generators=WORLD)
    for _ in range(3):
        f.rank(t, make_user("annotator"), [[i] for i in ids])
    consensus_recompute(task_id=t.pk)
    return t, ids


def _body(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


def _mapping_post(client, names: dict[str, str]):
    data = {f"itercomp_{Generator.objects.get(slug=slug).pk}": name for slug, name in names.items()}
    return client.post("/research/generators/", data)


def test_a_researcher_maps_the_generators_and_the_itercomp_export_is_no_longer_empty(
    client, make_user, ranked_world_task
):
    task, ids = ranked_world_task
    client.force_login(make_user("researcher"))
    before = client.get("/research/export/check/", {"kind": "rankings", "format": "itercomp"})
    assert "/research/generators/" in before.content.decode()
    assert json.loads(_body(client.get("/api/export/rankings/itercomp/"))) == []

    response = _mapping_post(client, dict(zip(WORLD, SIX, strict=True)))
    assert response.status_code == 302
    assert dict(Generator.objects.filter(slug__in=WORLD).values_list("slug", "itercomp_name")) == dict(
        zip(WORLD, SIX, strict=True)
    )
    after = client.get("/research/export/check/", {"kind": "rankings", "format": "itercomp"})
    assert 'data-role="export-problem"' not in after.content.decode()
    records = json.loads(_body(client.get("/api/export/rankings/itercomp/")))
    assert len(records) == 1 and records[0]["prompt"] == "a red cube left of a blue ball"
    # The experts ranked the images in task order (world-a … world-f), i.e. FLUX, SD3, SDXL, SD1.5, RPG,
    # InstanceDiffusion: 1-based indices into IterComp's gallery order (sd15, sdxl, sd3, flux, rpg, instancediffusion).
    assert records[0]["rank"] == [4, 3, 2, 1, 5, 6]
    assert {f"image_{name}" for name in SIX} <= set(records[0])


def test_one_name_for_two_generators_is_refused_and_nothing_changes(client, make_user, ranked_world_task):
    client.force_login(make_user("researcher"))
    response = _mapping_post(client, {"world-a": "flux", "world-b": "flux"})
    assert response.status_code == 400 and "two generators are mapped to flux" in response.content.decode()
    assert not Generator.objects.exclude(itercomp_name="").exists()


def test_two_mapped_generators_can_swap_names_in_one_save(client, make_user, ranked_world_task):
    client.force_login(make_user("researcher"))
    assert _mapping_post(client, {"world-a": "flux", "world-b": "sd3"}).status_code == 302
    assert _mapping_post(client, {"world-a": "sd3", "world-b": "flux"}).status_code == 302
    assert Generator.objects.get(slug="world-a").itercomp_name == "sd3"


def test_a_mapped_name_is_not_taken_twice_by_a_generator_that_only_has_the_slug():
    mapped = {"my-flux-finetune": "flux"}
    assert itercomp_model_name("my-flux-finetune", mapped) == "flux"
    assert itercomp_model_name("flux", mapped) == "flux_unmapped"
    assert itercomp_model_name("Stable-Diffusion-XL", mapped) == "sdxl"


def test_an_admin_registers_a_generator_and_a_bad_pipeline_is_refused(client, make_user):
    client.force_login(make_user("admin"))
    response = client.post(
        "/people/generators/new/",
        {"name": "My SDXL fine-tune", "pipeline_class": "StableDiffusionXLPipeline", "weights_uri": "/m/x"},
    )
    assert response.status_code == 302
    g = Generator.objects.get(slug="my-sdxl-fine-tune")
    assert (g.pipeline_class, g.weights_uri) == ("StableDiffusionXLPipeline", "/m/x")
    bad = client.post("/people/generators/new/", {"name": "Odd", "pipeline_class": "KandinskyPipeline"})
    assert bad.status_code == 400 and "not supported" in bad.content.decode()
    assert not Generator.objects.filter(slug="odd").exists()
    six = client.post("/people/generators/new/", {"itercomp_gallery": "1"})
    assert six.status_code == 302 and Generator.objects.filter(slug__in=SIX).count() == 6


def test_researchers_map_but_cannot_register_and_annotators_do_neither(client, make_user, ranked_world_task):
    client.force_login(make_user("researcher"))
    assert client.post("/people/generators/new/", {"name": "Sneaky"}).status_code == 403
    client.force_login(make_user("annotator"))
    assert client.get("/research/generators/").status_code == 403
    assert _mapping_post(client, {"world-a": "flux"}).status_code == 403
    assert not Generator.objects.filter(slug="sneaky").exists()
    assert not Generator.objects.exclude(itercomp_name="").exists()


def test_the_gallery_export_of_an_annotators_rankings_uses_the_mapping_too(tmp_path, make_user):
    from annotation.gallery_exports import export_itercomp
    from gallery.services.generators import generators_map_itercomp

    expert = make_user("annotator")
    task, ids = f.task(f.prompt("a cup above a plate", "spatial"), generators=WORLD)
    f.rank(task, expert, [[i] for i in ids])
    assert export_itercomp(out_path=tmp_path / "before.json", annotator=expert) == (0, 1)
    generators_map_itercomp(
        mapping={Generator.objects.get(slug=s).pk: n for s, n in zip(WORLD, SIX, strict=True)}
    )
    assert export_itercomp(out_path=tmp_path / "after.json", annotator=expert) == (1, 0)
    record = json.loads((tmp_path / "after.json").read_text())[0]
    assert record["rank"] == [4, 3, 2, 1, 5, 6] and record["image_flux"].startswith("images/flux")
