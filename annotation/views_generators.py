"""Generators in the browser: the list of gallery models with the IterComp name each stands for (researchers
map them; the IterComp export reads the mapping), and the admins' registration form (the browser side of
``manage register_generator``). Thin: gallery's services write, its selectors read."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from annotation.views import admin_page
from annotation.views_research import researcher_page
from gallery.models import ITERCOMP_NAME_CHOICES, Generator
from gallery.services.generators import (
    SUPPORTED_PIPELINES,
    GeneratorError,
    generator_register,
    generators_ensure_itercomp_gallery,
    generators_map_itercomp,
)

FIELD_PREFIX = "itercomp_"


def _context(request: HttpRequest, **extra: object) -> dict[str, object]:
    return {
        "generators": Generator.objects.annotate(n_images=Count("images")).order_by(
            "joined_iteration", "slug"
        ),
        "names": ITERCOMP_NAME_CHOICES,
        "pipelines": SUPPORTED_PIPELINES,
        **extra,
    }


@require_http_methods(["GET", "POST"])
@researcher_page
def generators(request: HttpRequest) -> HttpResponse:
    """GET: the generators and their IterComp names; POST: save the whole mapping at once."""
    if request.method == "POST":
        mapping: dict[int, str] = {}
        for key, value in request.POST.items():
            if key.startswith(FIELD_PREFIX) and key[len(FIELD_PREFIX) :].isdigit():
                mapping[int(key[len(FIELD_PREFIX) :])] = value.strip()
        try:
            generators_map_itercomp(mapping=mapping)
        except GeneratorError as exc:
            return render(
                request,
                "research/generators.html",
                _context(request, error=str(exc), posted=mapping),
                status=400,
            )
        messages.success(request, "Mapping saved: the IterComp export uses it from now on.")
        return redirect(reverse("generators"))
    return render(request, "research/generators.html", _context(request))


@require_POST
@admin_page
def generator_new(request: HttpRequest) -> HttpResponse:
    """Register a generator (or update how an existing slug is loaded), or ensure the six IterComp models."""
    if request.POST.get("itercomp_gallery"):
        generators_ensure_itercomp_gallery()
        messages.success(request, "The six IterComp gallery generators are present.")
        return redirect(reverse("generators"))
    name = request.POST.get("name", "").strip()
    if not name or len(name) > 80:
        error = "a name of 1–80 characters is required"
    else:
        try:
            generator, created = generator_register(
                name=name,
                slug=request.POST.get("slug", "").strip(),
                pipeline_class=request.POST.get("pipeline_class", "").strip(),
                weights_uri=request.POST.get("weights_uri", "").strip(),
                description=request.POST.get("description", "").strip(),
            )
        except GeneratorError as exc:
            error = str(exc)
        else:
            messages.success(request, f"Generator {generator.slug} {'registered' if created else 'updated'}.")
            return redirect(reverse("generators"))
    return render(
        request,
        "research/generators.html",
        _context(request, register_error=error, values=request.POST),
        status=400,
    )
