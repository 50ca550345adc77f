from __future__ import annotations

from django.contrib import admin

from gallery.models import Category, GenerationJob, Generator, Image, Prompt, Subcategory


class SubcategoryInline(admin.TabularInline):
    model = Subcategory
    extra = 0


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "allows_ties", "position"]
    inlines = [SubcategoryInline]


@admin.register(Subcategory)
class SubcategoryAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "category"]


@admin.register(Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = ["text", "category", "subcategory", "source", "split"]
    list_filter = ["category", "subcategory", "source", "split"]
    search_fields = ["text"]


@admin.register(Generator)
class GeneratorAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "pipeline_class", "joined_iteration", "base_iteration"]
    list_filter = ["kind"]
    prepopulated_fields = {"slug": ["name"]}


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ["id", "prompt", "generator", "width", "height", "seed", "iteration", "created_at"]
    list_filter = ["generator", "iteration", "prompt__category"]
    search_fields = ["prompt__text", "sha256"]
    raw_id_fields = ["prompt"]
    readonly_fields = ["sha256", "created_at"]


@admin.register(GenerationJob)
class GenerationJobAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "generator",
        "status",
        "images_done",
        "images_total",
        "pipeline_loads",
        "created_at",
    ]
    list_filter = ["status", "generator"]
    readonly_fields = [
        "status", "claimed_by", "heartbeat_at", "images_done", "pipeline_loads", "error", "started_at", "finished_at"
    ]  # fmt: skip
    filter_horizontal = ["prompts"]
