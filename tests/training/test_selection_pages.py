"""The accuracy-vs-rankings-spent curves per policy (round page, /training/selection/, loaded into
/quality/) and the admins' policy form on /quality/."""

from __future__ import annotations

import hashlib

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from annotation.models import CategorySelection
from gallery.models import Category
from training.models import RewardModelCheckpoint
from training.services import round_create

pytestmark = pytest.mark.django_db


def _checkpoint(training_round, iteration: int, **metrics) -> None:
    data = f"reward {training_round.pk} {iteration}".encode()
    sha = hashlib.sha256(data).hexdigest()
    RewardModelCheckpoint.objects.create(
        training_round=training_round,
        category=Category.objects.get(slug="spatial"),
        iteration=iteration,
        file=default_storage.save(f"checkpoints/reward/{sha}.tar", ContentFile(data)),
        sha256=sha,
        metrics={"own_pairs": 90, **metrics},
    )


@pytest.fixture
def rounds(make_user):
    admin = make_user("admin")
    spatial = list(Category.objects.filter(slug="spatial"))
    training_round = round_create(
        created_by=admin,
        categories=spatial,
        base_generator=None,
        iterations=4,
        config={"base_model": "synthetic-world"},
    )
    point = {"own_accuracy_ci_low": 0.5, "own_accuracy_ci_high": 0.7}
    _checkpoint(training_round, 0, own_accuracy=0.55, rankings_spent=30, selection_policy="random", **point)
    _checkpoint(training_round, 1, own_accuracy=0.61, rankings_spent=60, selection_policy="random", **point)
    _checkpoint(training_round, 2, own_accuracy=0.64, rankings_spent=45, selection_policy="mix", **point)
    # Trained before this feature recorded the rankings spent: no point on the curve.
    _checkpoint(training_round, 3, own_accuracy=0.9)
    return admin, training_round


def test_the_round_page_shows_own_sample_accuracy_against_rankings_spent_per_policy(client, rounds):
    admin, first = rounds
    client.force_login(admin)
    page = client.get(f"/training/rounds/{first.pk}/").content.decode()
    page = page[page.index('data-role="selection-curves"') :]
    page = page[: page.index("</section>")]
    assert "Spatial relationships: own-sample accuracy vs rankings spent" in page
    assert page.count('data-policy="random"') == 2 and page.count('data-policy="mix"') == 1
    assert "0.640 [0.500, 0.700]" in page
    assert "0.900" not in page


def test_quality_loads_the_curves_and_researchers_can_open_them(client, rounds, make_user):
    admin, _ = rounds
    client.force_login(admin)
    quality = client.get("/quality/").content.decode()
    assert 'hx-get="/training/selection/"' in quality and 'href="/training/selection/"' in quality
    partial = client.get("/training/selection/", headers={"HX-Request": "true"}).content.decode()
    assert partial.lstrip().startswith('<section id="selection-curves"') and "<html" not in partial
    client.force_login(make_user("researcher"))
    full = client.get("/training/selection/")
    assert full.status_code == 200 and "0.610 [0.500, 0.700]" in full.content.decode()
    client.force_login(make_user("annotator"))
    assert client.get("/training/selection/").status_code == 403


def test_an_admin_sets_a_categorys_policy_on_the_quality_page(client, make_user):
    spatial = Category.objects.get(slug="spatial")
    client.force_login(make_user("researcher"))
    assert client.post("/quality/selection/", {"category": spatial.pk, "policy": "mix"}).status_code == 403
    client.force_login(make_user("admin"))
    bad = client.post("/quality/selection/", {"category": spatial.pk, "policy": "mix", "random_share": "1.5"})
    assert bad.status_code == 400 and not CategorySelection.objects.exists()
    response = client.post(
        "/quality/selection/", {"category": spatial.pk, "policy": "mix", "random_share": "0.3"}
    )
    assert response.status_code == 303
    row = CategorySelection.objects.get(category=spatial)
    assert (row.policy, row.random_share) == ("mix", 0.3)
    page = client.get("/quality/").content.decode()
    assert '<option value="mix" selected>' in page
