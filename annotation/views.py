"""Pages of the ranking experience: queues, the ranking page, corrections, and the admins' review,
quality and account pages. Thin: parse the request, call a service or selector, render."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotation import selectors
from annotation.models import FlagKind, Role, SelectionPolicy
from annotation.roles import is_admin, role_of
from annotation.services.claims import task_claims_ensure
from annotation.services.gold import gold_image_candidates, gold_task_create
from annotation.services.refusals import RankingRefused, SubmissionInvalid
from annotation.services.review import flag_resolve, task_release
from annotation.services.review import skip_undo as skip_undo_service
from annotation.services.selection import DEFAULT_RANDOM_SHARE, selection_policy_set
from annotation.services.submission import (
    CORRECTION_WINDOW_SECONDS,
    RANK_FIELD_PREFIX,
    correctable_ranking,
    ranking_correct,
    ranking_submit,
)
from annotation.services.users import generate_password, user_create, user_set_password
from gallery.models import Category, Prompt

RANKER_ROLES = (Role.ANNOTATOR, Role.ADMIN)


# --------------------------------------------------------------------------------------------------------
# Access
# --------------------------------------------------------------------------------------------------------


def _refuse(request: HttpRequest, message: str, status: int) -> HttpResponse:
    template = "annotation/refused.html#refused" if _is_partial(request) else "annotation/refused.html"
    response = render(request, template, {"message": message}, status=status)
    if status in (401, 403) and not request.user.is_authenticated and getattr(request, "htmx", False):
        response["HX-Redirect"] = reverse("login")
    return response


def _page_view(check: Callable[[Any], bool], denied: str) -> Callable:
    """Pages: anonymous users go to the login page, signed-in users without the role get a 403."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not request.user.is_authenticated:
                if request.method == "GET":
                    return redirect_to_login(request.get_full_path())
                return _refuse(request, "You are logged out. Log in again to go on.", 403)
            if not check(request.user):
                return _refuse(request, denied, 403)
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


def _signed_in(view: Callable) -> Callable:
    """Ranking writes: the claim itself is the permission (only rankers ever get one), so no role lookup
    is spent here; that keeps a submission within its query budget."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return _refuse(request, "You are logged out. Log in again; your ranking was not recorded.", 403)
        return view(request, *args, **kwargs)

    return wrapped


ranker_page = _page_view(lambda u: role_of(u) in RANKER_ROLES, "Only annotators and admins rank images.")
admin_page = _page_view(is_admin, "Only admins can open this page.")


def _is_partial(request: HttpRequest) -> bool:
    htmx = getattr(request, "htmx", None)
    return bool(htmx) and not htmx.history_restore_request


def _advance(request: HttpRequest, url: str, *, notice: str = "") -> HttpResponse:
    """After a write: htmx loads the next task into the page (no reload), plain forms redirect.

    ``notice`` (a query string: what was just done) lets the next page confirm it; the address bar keeps
    the plain URL, so a reload does not repeat the confirmation.
    """
    path = f"{url}?{notice}" if notice else url
    if getattr(request, "htmx", False):
        response = HttpResponse(status=200)
        response["HX-Location"] = json.dumps(
            {"path": path, "target": "#task", "swap": "outerHTML", "push": url}
        )
        return response
    return _see_other(path)


def _see_other(url: str) -> HttpResponse:
    response = HttpResponse(status=303)
    response["Location"] = url
    return response


def _rank_fields(request: HttpRequest) -> dict[str, list[str]]:
    return {k: request.POST.getlist(k) for k in request.POST if k.startswith(RANK_FIELD_PREFIX)}


def _posted_ranks(fields: dict[str, list[str]]) -> dict[int, int]:
    """What the annotator had chosen, to put back into the form after a refusal."""
    ranks = {}
    for name, values in fields.items():
        label, value = name[len(RANK_FIELD_PREFIX) :], (values[-1] if values else "")
        if label.isdigit() and value.strip().isdigit():
            ranks[int(label)] = int(value)
    return ranks


def _elapsed_ms(shown_at: str | None) -> int:
    """Time on the task, from the render time the page carried; clamped to the lease."""
    try:
        start = int(shown_at or "")
    except ValueError:
        return 0
    return max(0, min(int(time.time() * 1000) - start, settings.TASK_LEASE_SECONDS * 1000))


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return -1  # a malformed task id can only be a foreign one


# --------------------------------------------------------------------------------------------------------
# Annotators: queues and the ranking page
# --------------------------------------------------------------------------------------------------------


@require_GET
@ranker_page
def queues(request: HttpRequest) -> HttpResponse:
    return render(
        request, "annotation/queues.html", {"rows": selectors.queue_overview(annotator=request.user)}
    )


def _category_or_404(slug: str) -> Category:
    category = selectors.category_by_slug(slug)
    if category is None:
        raise Http404("No such category.")
    return category


def _render_task(
    request: HttpRequest, page: selectors.RankingPage, *, status: int = 200, partial: bool | None = None
) -> HttpResponse:
    partial = _is_partial(request) if partial is None else partial
    template = "annotation/rank.html#task" if partial else "annotation/rank.html"
    return render(request, template, {"page": page}, status=status)


@require_GET
@ranker_page
def rank(request: HttpRequest, category: str) -> HttpResponse:
    cat = _category_or_404(category)
    pair = task_claims_ensure(annotator=request.user, category=cat)
    page = selectors.ranking_page(
        annotator=request.user,
        category=cat,
        claim=pair.current,
        upcoming=pair.upcoming,
        skipped_flag_id=_int_or_none(request.GET.get("skipped")),
        flagged="flagged" in request.GET,
    )
    return _render_task(request, page)


def _refused_task(
    request: HttpRequest, claim_id: int, exc: RankingRefused, fields: dict[str, list[str]]
) -> HttpResponse:
    """Show the refusal inside the task the annotator was working on, choices kept; nothing was written."""
    claim = selectors.claim_for_page(claim_id=claim_id)
    if claim is None or claim.annotator_id != request.user.pk:
        return _refuse(request, exc.message, exc.status)
    category = claim.task.prompt.category
    keep = isinstance(exc, SubmissionInvalid)
    page = selectors.ranking_page(
        annotator=request.user,
        category=category,
        claim=claim if keep else None,
        upcoming=None,
        ranks=_posted_ranks(fields) if keep else None,
        error=exc.message,
        idempotency_key=request.POST.get("idempotency_key") if keep else None,
        shown_at_ms=_int_or_none(request.POST.get("shown_at")) if keep else None,
    )
    return _render_task(request, page, status=exc.status)


@require_POST
@_signed_in
def submit(request: HttpRequest, claim_id: int) -> HttpResponse:
    fields = _rank_fields(request)
    try:
        _, claim = ranking_submit(
            claim_id=claim_id,
            annotator=request.user,
            fields=fields,
            idempotency_key=request.POST.get("idempotency_key"),
            task_id=_int_or_none(request.POST.get("task")),
            time_spent_ms=_elapsed_ms(request.POST.get("shown_at")),
        )
    except RankingRefused as exc:
        return _refused_task(request, claim_id, exc, fields)
    return _advance(request, reverse("rank", args=[claim.task.prompt.category.slug]))


def _release(request: HttpRequest, claim_id: int, kind: str) -> HttpResponse:
    try:
        flag = task_release(
            claim_id=claim_id, annotator=request.user, kind=kind, reason=request.POST.get("reason", "")
        )
    except RankingRefused as exc:
        return _refused_task(request, claim_id, exc, _rank_fields(request))
    slug = flag.task.prompt.category.slug
    notice = f"skipped={flag.pk}" if kind == FlagKind.SKIP else "flagged=1"
    return _advance(request, reverse("rank", args=[slug]), notice=notice)


@require_POST
@_signed_in
def skip_undo(request: HttpRequest, flag_id: int) -> HttpResponse:
    try:
        claim = skip_undo_service(flag_id=flag_id, annotator=request.user)
    except RankingRefused as exc:
        return _refuse(request, exc.message, exc.status)
    return _advance(request, reverse("rank", args=[claim.task.prompt.category.slug]))


@require_POST
@_signed_in
def skip(request: HttpRequest, claim_id: int) -> HttpResponse:
    return _release(request, claim_id, FlagKind.SKIP)


@require_POST
@_signed_in
def flag(request: HttpRequest, claim_id: int) -> HttpResponse:
    return _release(request, claim_id, FlagKind.FLAG)


@require_http_methods(["GET", "POST"])
@ranker_page
def correct(request: HttpRequest, ranking_id: int) -> HttpResponse:
    ranking = selectors.ranking_of(ranking_id=ranking_id)
    if ranking is None or ranking.annotator_id != request.user.pk:
        return _refuse(request, "You can only correct your own rankings.", 403)
    slug = ranking.task.prompt.category.slug
    if request.method == "POST":
        fields = _rank_fields(request)
        try:
            ranking_correct(ranking_id=ranking.pk, annotator=request.user, fields=fields)
        except RankingRefused as exc:
            page = selectors.correction_page(ranking=ranking, ranks=_posted_ranks(fields), error=exc.message)
            return render(request, "annotation/correct.html", {"page": page}, status=exc.status)
        messages.success(request, "Your corrected ranking is saved.")
        return _see_other(reverse("rank", args=[slug]))
    if correctable_ranking(annotator=request.user) != ranking:
        return _refuse(
            request,
            "Only your last ranking can be corrected, and only for "
            f"{CORRECTION_WINDOW_SECONDS // 60} minutes after you submit it.",
            409,
        )
    return render(request, "annotation/correct.html", {"page": selectors.correction_page(ranking=ranking)})


# --------------------------------------------------------------------------------------------------------
# Admins: review queue
# --------------------------------------------------------------------------------------------------------


@require_GET
@admin_page
def review(request: HttpRequest) -> HttpResponse:
    show_resolved = request.GET.get("show") == "all"
    return render(
        request,
        "annotation/review.html",
        {
            "flags": selectors.review_queue(show_resolved=show_resolved)[:500],
            "counts": selectors.review_counts(),
            "show_resolved": show_resolved,
        },
    )


@require_POST
@admin_page
def review_resolve(request: HttpRequest, flag_id: int) -> HttpResponse:
    try:
        flag = flag_resolve(
            flag_id=flag_id,
            admin=request.user,
            resolution=request.POST.get("resolution", ""),
            retire_task=request.POST.get("retire") == "1",
        )
    except RankingRefused as exc:
        return _refuse(request, exc.message, exc.status)
    if _is_partial(request):
        flag = selectors.review_queue(show_resolved=True).get(pk=flag.pk)
        return render(request, "annotation/review.html#flag-row", {"f": flag})
    messages.success(request, f"Resolved: {flag.get_kind_display()} of task {flag.task_id}.")
    return _see_other(reverse("review"))


# --------------------------------------------------------------------------------------------------------
# Admins: quality (agreement, activity, gold tasks)
# --------------------------------------------------------------------------------------------------------


@require_GET
@admin_page
def quality(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "annotation/quality.html",
        {
            "activity": selectors.annotator_activity(),
            "by_category": selectors.agreement_by_category(),
            "gold": selectors.gold_tasks()[:200],
            "gold_rate": settings.GOLD_TASK_RATE,
            "selection": selectors.selection_overview(),
            "policies": SelectionPolicy.choices,
        },
    )


@require_POST
@admin_page
def quality_selection(request: HttpRequest) -> HttpResponse:
    """An admin sets one category's task-priority policy; the queue is reordered from the stored scores."""
    category = Category.objects.filter(pk=_int_or_none(request.POST.get("category"))).first()
    policy = request.POST.get("policy", "")
    try:
        share = float(request.POST.get("random_share") or DEFAULT_RANDOM_SHARE)
    except ValueError:
        share = -1.0
    if category is None or policy not in SelectionPolicy.values or not 0.0 < share < 1.0:
        return _refuse(
            request, "Choose a category, a policy and a random share strictly between 0 and 1.", 400
        )
    selection_policy_set(category=category, policy=policy, random_share=share, user=request.user)
    messages.success(request, f"{category.name}: tasks are now handed out by {policy}.")
    return _see_other(reverse("quality") + "#selection")


@require_http_methods(["GET", "POST"])
@admin_page
def gold_new(request: HttpRequest) -> HttpResponse:
    """Two steps on one page: pick a prompt, then give the reference ranking of its images."""
    source = request.POST if request.method == "POST" else request.GET
    prompt = Prompt.objects.select_related("category").filter(pk=_int_or_none(source.get("prompt"))).first()
    category = selectors.category_by_slug(request.GET.get("category", ""))
    context: dict[str, Any] = {
        "categories": Category.objects.order_by("position"),
        "selected_category": category,
        "query": request.GET.get("q", ""),
        "prompt": prompt,
        "required": _int_or_none(source.get("required")) or settings.RANKINGS_PER_TASK,
    }
    if prompt is None:
        context["prompts"] = selectors.gold_prompt_choices(category=category, query=context["query"])
        return render(request, "annotation/gold_new.html", context)
    images = gold_image_candidates(prompt=prompt)
    image_ids = [im.pk for im in images]
    status = 200
    if request.method == "POST":
        fields = _rank_fields(request)
        try:
            task = gold_task_create(
                prompt=prompt,
                image_ids=image_ids,
                fields=fields,
                required_rankings=context["required"],
                created_by=request.user,
            )
        except RankingRefused as exc:
            context["error"], status = exc.message, exc.status
            context["images"] = selectors.shown_images(image_ids, ranks=_posted_ranks(fields))
        else:
            messages.success(request, f"Gold task {task.pk} created; it joins the queue like any task.")
            return _see_other(reverse("quality"))
    else:
        context["images"] = selectors.shown_images(image_ids)
    context.update(allows_ties=prompt.category.allows_ties, keys=list(range(1, len(image_ids) + 1)))
    return render(request, "annotation/gold_new.html", context, status=status)


# --------------------------------------------------------------------------------------------------------
# Admins: accounts (no email anywhere: passwords are shown once to the admin)
# --------------------------------------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@admin_page
def people(request: HttpRequest) -> HttpResponse:
    context: dict[str, Any] = {"roles": Role.choices}
    status = 200
    if request.method == "POST":
        username = request.POST.get("username", "").strip()
        role = request.POST.get("role", Role.ANNOTATOR)
        if not username or len(username) > 150:
            context["error"], status = "Give a username of 1 to 150 characters.", 400
        elif get_user_model().objects.filter(username__iexact=username).exists():
            context["error"], status = f"The username “{username}” is taken.", 400
        elif role not in Role.values:
            context["error"], status = "Choose a role.", 400
        else:
            password = generate_password()
            user_create(username=username, role=role, password=password)
            context["issued"] = {"username": username, "password": password, "created": True}
    context["accounts"] = selectors.accounts()
    return render(request, "annotation/people.html", context, status=status)


@require_POST
@admin_page
def people_password(request: HttpRequest, user_id: int) -> HttpResponse:
    user = get_user_model().objects.filter(pk=user_id).first()
    if user is None:
        raise Http404("No such account.")
    password = generate_password()
    user_set_password(user=user, password=password)
    context = {
        "roles": Role.choices,
        "accounts": selectors.accounts(),
        "issued": {"username": user.username, "password": password, "created": False},
    }
    return render(request, "annotation/people.html", context)
