"""The REST API under /api/: each app contributes its routes from its own api.py."""

from __future__ import annotations

from annotation import api as annotation_api

urlpatterns: list = []
urlpatterns += annotation_api.urlpatterns
