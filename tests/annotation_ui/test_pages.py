"""The annotator's page and the admins' pages, through the Django test client (no JavaScript)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from annotation.models import ClaimStatus, Ranking, RankingTask, TaskClaim, TaskFlag
from gallery.models import Generator
from tests.annotation_ui.conftest import GENERATOR_NAMES, rank_fields, submit_data

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_gold(settings):
    settings.GOLD_TASK_RATE = 0


@pytest.fixture
def annotator_client(client, make_user):
    user = make_user("annotator")
    client.force_login(user)
    client.user = user
    return client


def _form_fields(html: str) -> dict[str, str]:
    """What a browser without JavaScript would post from the ranking form (hidden inputs)."""
    form = html[html.index('id="rank-form"') :]
    form = form[: form.index("</form>")]
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form))


def test_the_page_shows_the_prompt_what_to_judge_guidelines_and_n_images(annotator_client, task_factory):
    task = task_factory(text="a dog on the left of a cat")
    html = annotator_client.get("/rank/spatial/").content.decode()
    assert "a dog on the left of a cat" in html
    assert task.prompt.category.what_to_judge in html
    assert "Worked example" in html  # the category's guidelines, openable from the page
    assert len(re.findall(r'<li class="cand"', html)) == 6
    for label in range(1, 7):
        assert f'alt="Candidate image {label} of 6"' in html
        assert f'name="rank_{label}"' in html


def test_the_page_is_blind_no_generator_name_anywhere(annotator_client, task_factory):
    task_factory(), task_factory()
    html = annotator_client.get("/rank/spatial/").content.decode().lower()
    for generator in Generator.objects.all():
        assert generator.name.lower() not in html
        assert generator.slug.lower() not in html
    for name in GENERATOR_NAMES:
        assert name.lower() not in html


def test_the_next_tasks_images_are_prefetched(annotator_client, task_factory):
    task_factory(), task_factory()
    html = annotator_client.get("/rank/spatial/").content.decode()
    claims = TaskClaim.objects.filter(annotator=annotator_client.user).order_by("id")
    assert claims.count() == 2
    prefetch = re.findall(r'<link rel="prefetch" as="image" href="([^"]+)"', html)
    assert len(prefetch) == 6
    shown = re.findall(r'<img src="([^"]+)"', html)
    assert not set(prefetch) & set(shown)


def test_a_ranking_can_be_submitted_without_javascript(annotator_client, task_factory):
    task_factory(), task_factory()
    page = annotator_client.get("/rank/spatial/").content.decode()
    data = _form_fields(page)
    data.update(rank_fields([6, 5, 4, 3, 2, 1]))
    response = annotator_client.post(re.search(r'action="(/rank/claims/\d+/submit/)"', page).group(1), data)
    assert response.status_code == 303
    assert Ranking.objects.filter(annotator=annotator_client.user).count() == 1
    after = annotator_client.get(response["Location"]).content.decode()
    # Auto-advance: the page now shows the task that was prefetched, and the progress moved.
    assert 'data-stat="today">1<' in after and 'data-stat="total">1<' in after
    assert "Correct your last ranking" in after


def test_progress_counts_what_is_left_in_the_category(annotator_client, task_factory):
    for _ in range(3):
        task_factory()
    task_factory(category="non_spatial")
    html = annotator_client.get("/rank/spatial/").content.decode()
    assert 'data-stat="remaining">3<' in html


def test_htmx_gets_only_the_task_section(annotator_client, task_factory):
    task_factory()
    html = annotator_client.get("/rank/spatial/", HTTP_HX_REQUEST="true").content.decode()
    assert html.lstrip().startswith('<section id="task"') and "<html" not in html


def test_an_empty_queue_says_so(annotator_client):
    html = annotator_client.get("/rank/spatial/").content.decode()
    assert "Nothing to rank here right now" in html


def test_no_inline_scripts_or_handlers_on_the_ranking_page(annotator_client, task_factory):
    task_factory()
    html = annotator_client.get("/rank/spatial/").content.decode()
    assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html) is None
    assert re.search(r"\son[a-z]+=", html) is None


def test_researchers_cannot_rank_and_anonymous_users_are_sent_to_login(client, make_user, task_factory):
    task_factory()
    assert client.get("/rank/spatial/").status_code == 302
    client.force_login(make_user("researcher"))
    assert client.get("/rank/spatial/").status_code == 403
    assert client.get("/rank/").status_code == 403


def test_the_queues_page_lists_each_category_with_what_waits(annotator_client, task_factory):
    task_factory(), task_factory(category="non_spatial")
    html = annotator_client.get("/rank/").content.decode()
    for name in ("Attribute binding", "Spatial relationships", "Non-spatial relationships"):
        assert name in html
    assert 'href="/rank/spatial/"' in html


def test_skip_and_flag_put_the_task_in_the_admin_review_queue(annotator_client, task_factory, make_user):
    task_factory(), task_factory(), task_factory()
    annotator_client.get("/rank/spatial/")
    first, second = TaskClaim.objects.filter(annotator=annotator_client.user).order_by("id")
    assert annotator_client.post(f"/rank/claims/{first.pk}/skip/").status_code == 303
    refused = annotator_client.post(f"/rank/claims/{second.pk}/flag/", {"reason": "  "})
    assert refused.status_code == 400 and "Say what is wrong" in refused.content.decode()
    flagged = annotator_client.post(f"/rank/claims/{second.pk}/flag/", {"reason": "image 3 is blank"})
    assert flagged.status_code == 303
    assert set(TaskFlag.objects.values_list("kind", "reason")) == {("skip", ""), ("flag", "image 3 is blank")}
    assert annotator_client.get("/review/").status_code == 403
    admin = make_user("admin")
    annotator_client.force_login(admin)
    review = annotator_client.get("/review/").content.decode()
    assert "image 3 is blank" in review and "skipped" in review
    flag = TaskFlag.objects.get(kind="flag")
    resolved = annotator_client.post(
        f"/review/{flag.pk}/resolve/", {"resolution": "image replaced", "retire": "1"}, HTTP_HX_REQUEST="true"
    )
    assert resolved.status_code == 200 and "image replaced" in resolved.content.decode()
    flag.refresh_from_db()
    assert flag.resolved_by == admin and flag.resolved_at is not None
    assert RankingTask.objects.get(pk=flag.task_id).status == "retired"
    assert "image 3 is blank" not in annotator_client.get("/review/").content.decode()


def test_an_annotator_corrects_their_last_ranking_within_the_window(annotator_client, task_factory):
    task_factory(), task_factory()
    annotator_client.get("/rank/spatial/")
    claim = TaskClaim.objects.filter(annotator=annotator_client.user).order_by("id").first()
    annotator_client.post(f"/rank/claims/{claim.pk}/submit/", submit_data(claim, order=[1, 2, 3, 4, 5, 6]))
    ranking = Ranking.objects.get()
    page = annotator_client.get(f"/rank/rankings/{ranking.pk}/correct/")
    assert page.status_code == 200 and '<option value="1" selected>' in page.content.decode()
    response = annotator_client.post(f"/rank/rankings/{ranking.pk}/correct/", rank_fields([6, 5, 4, 3, 2, 1]))
    assert response.status_code == 303
    ranking.refresh_from_db()
    assert ranking.ordering == [[image_id] for image_id in reversed(claim.shown_order)]
    Ranking.objects.filter(pk=ranking.pk).update(created_at=timezone.now() - timedelta(minutes=6))
    late = annotator_client.post(f"/rank/rankings/{ranking.pk}/correct/", rank_fields([1, 2, 3, 4, 5, 6]))
    assert late.status_code == 409 and "5 minutes" in late.content.decode()
    ranking.refresh_from_db()
    assert ranking.ordering[0] == [claim.shown_order[5]]


def test_nobody_corrects_someone_elses_ranking(annotator_client, task_factory, make_user):
    task_factory()
    annotator_client.get("/rank/spatial/")
    claim = TaskClaim.objects.get(annotator=annotator_client.user)
    annotator_client.post(f"/rank/claims/{claim.pk}/submit/", submit_data(claim))
    ranking = Ranking.objects.get()
    annotator_client.force_login(make_user("annotator"))
    response = annotator_client.post(f"/rank/rankings/{ranking.pk}/correct/", rank_fields([6, 5, 4, 3, 2, 1]))
    assert response.status_code == 403
    assert Ranking.objects.get().ordering == ranking.ordering


def test_admins_create_a_gold_task_from_the_interface(admin_client, task_factory, make_user, settings):
    source = task_factory(text="a cat above a dog")
    page = admin_client.get(f"/quality/gold/new/?prompt={source.prompt_id}").content.decode()
    assert len(re.findall(r'<li class="cand"', page)) == 6
    response = admin_client.post(
        "/quality/gold/new/", {"prompt": source.prompt_id, "required": "5", **rank_fields([2, 1, 3, 4, 5, 6])}
    )
    assert response.status_code == 303
    gold = RankingTask.objects.get(is_gold=True)
    images = list(source.task_images.order_by("position").values_list("image_id", flat=True))
    assert gold.gold_ordering == [[images[1]], [images[0]], *[[i] for i in images[2:]]]
    assert gold.required_rankings == 5
    # It looks like any other task to the annotator who gets it.
    settings.GOLD_TASK_RATE = 1.0
    annotator = Client()
    annotator.force_login(make_user("annotator"))
    html = annotator.get("/rank/spatial/").content.decode()
    claim = TaskClaim.objects.filter(task=gold).get()
    assert (
        claim.status == ClaimStatus.ACTIVE and "gold" not in html.lower() and "reference" not in html.lower()
    )


def test_quality_figures_are_for_admins_only(admin_client, make_user):
    page = admin_client.get("/quality/")
    assert page.status_code == 200 and "Annotators" in page.content.decode()
    admin_client.force_login(make_user("annotator"))
    assert admin_client.get("/quality/").status_code == 403
    assert admin_client.get("/quality/gold/new/").status_code == 403


def test_admins_create_accounts_and_reset_passwords_without_email(admin_client):
    client = Client()
    response = admin_client.post("/people/", {"username": "newexpert", "role": "annotator"})
    password = re.search(r'<code data-role="password">([^<]+)</code>', response.content.decode()).group(1)
    assert client.login(username="newexpert", password=password)
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.get(username="newexpert")
    reset = admin_client.post(f"/people/{user.pk}/password/")
    new_password = re.search(r'<code data-role="password">([^<]+)</code>', reset.content.decode()).group(1)
    assert new_password != password
    assert client.login(username="newexpert", password=new_password)
    assert not client.login(username="newexpert", password=password)
    taken = admin_client.post("/people/", {"username": "NewExpert", "role": "annotator"})
    assert taken.status_code == 400 and "taken" in taken.content.decode()


def test_annotators_cannot_manage_accounts(client, make_user):
    client.force_login(make_user("annotator"))
    assert client.get("/people/").status_code == 403
    assert client.post("/people/", {"username": "x", "role": "admin"}).status_code == 403
