"""The import contracts (scripts/check_imports.py, also run by .ci/run): the checkout keeps them, a
forbidden import added anywhere (inside a function, relative, by importlib) fails the checker, and a web
process that loads every URL, view, API and admin module never loads torch."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKER = ROOT / "scripts" / "check_imports.py"

_spec = importlib.util.spec_from_file_location("check_imports", CHECKER)
assert _spec is not None and _spec.loader is not None
check_imports = importlib.util.module_from_spec(_spec)
sys.modules["check_imports"] = check_imports  # dataclasses look their module up by name
_spec.loader.exec_module(check_imports)

LAYER_RULE = {
    "gallery": "gallery never imports annotation or training",
    "annotation": "annotation never imports training",
    "ml": "the ML core (training/ml) imports nothing of Django or the apps",
    "rankmath": "rankmath imports nothing of Django, the apps or the GPU stack",
    "jobs": "jobs never imports gallery, annotation or training",
    "web": check_imports.WEB_RULE_TEXT,
}


def _run_checker(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CHECKER), "--root", str(root)], capture_output=True, text=True, timeout=120
    )


def _copy_of_the_layers(tmp_path: Path) -> Path:
    """The checked packages' Python files, copied (data files such as model weights left out)."""
    root = tmp_path / "tree"

    def data_files(folder: str, names: list[str]) -> set[str]:
        return {
            n for n in names if n == "__pycache__" or (Path(folder, n).is_file() and not n.endswith(".py"))
        }

    for package in (*check_imports.WEB_PACKAGES, "rankmath"):
        if (ROOT / package).is_dir():
            shutil.copytree(ROOT / package, root / package, ignore=data_files)
    return root


def _append(root: Path, relative: str, code: str, marker: str) -> int:
    """Append ``code`` to the file (created if missing); returns the line number of ``marker`` in it."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    before = path.read_text() if path.exists() else ""
    if before and not before.endswith("\n"):
        before += "\n"
    path.write_text(before + textwrap.dedent(code))
    lines = path.read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if marker in line and i > before.count("\n"))


def test_the_checkout_keeps_every_import_contract():
    result = _run_checker(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no violations" in result.stdout


# (file, code appended to it, the line of the code that is reported, what it reports as imported, which rule)
FORBIDDEN = [
    pytest.param(
        "gallery/selectors.py",
        """
        def _rankings_model():
            from annotation.models import Ranking

            return Ranking
        """,
        "from annotation.models",
        "annotation.models",
        "gallery",
        id="gallery-imports-annotation-inside-a-function",
    ),
    pytest.param(
        "gallery/views.py",
        """
        def _load():
            import importlib

            return importlib.import_module("training.selectors")
        """,
        "import_module(",
        "training.selectors",
        "gallery",
        id="gallery-imports-training-by-importlib",
    ),
    pytest.param(
        "annotation/views.py",
        """
        def _round_count():
            from training import services

            return services
        """,
        "from training import services",
        "training.services",
        "annotation",
        id="annotation-imports-training-inside-a-function",
    ),
    pytest.param(
        "training/ml/refl/losses.py",
        """
        def _record():
            from ...services import round_event_add

            return round_event_add
        """,
        "from ...services",
        "training.services",
        "ml",
        id="ml-core-imports-the-app-by-a-relative-import",
    ),
    pytest.param(
        "training/ml/common.py",
        """
        from django.conf import settings
        """,
        "from django.conf",
        "django.conf",
        "ml",
        id="ml-core-imports-django",
    ),
    pytest.param(
        "rankmath/pairs.py",
        """
        def _table():
            from django.db import models

            return models
        """,
        "from django.db",
        "django.db",
        "rankmath",
        id="rankmath-imports-django-inside-a-function",
    ),
    pytest.param(
        "jobs/models.py",
        """
        from gallery.models import Image
        """,
        "from gallery.models",
        "gallery.models",
        "jobs",
        id="jobs-imports-gallery-once-the-folder-exists",
    ),
    pytest.param(
        "annotation/views.py",
        """
        import torch
        """,
        "import torch",
        "torch",
        "web",
        id="web-module-imports-torch-at-module-level",
    ),
    pytest.param(
        "training/views.py",
        """
        from training import stages
        """,
        "from training import stages",
        "training.stages",
        "web",
        id="web-module-imports-a-worker-only-module-at-module-level",
    ),
    pytest.param(
        "config/urls.py",
        """
        try:
            from training.ml.world import default_panel
        except ImportError:
            default_panel = None
        """,
        "from training.ml.world",
        "training.ml.world",
        "web",
        id="web-module-imports-the-ml-core-at-module-level",
    ),
]


@pytest.mark.parametrize(("relative", "code", "marker", "module", "rule"), FORBIDDEN)
def test_a_forbidden_import_fails_the_checker_with_its_place(tmp_path, relative, code, marker, module, rule):
    root = _copy_of_the_layers(tmp_path)
    assert _run_checker(root).returncode == 0  # the copy alone is clean: what follows is the added line's
    line = _append(root, relative, code, marker)
    result = _run_checker(root)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [f"{relative}:{line} imports {module} ({LAYER_RULE[rule]})"]


def test_the_same_imports_where_the_contracts_allow_them_pass(tmp_path):
    root = _copy_of_the_layers(tmp_path)
    # The GPU stack and the ML core inside a function of a web module, a type-only import, the ML core
    # importing rankmath, training importing annotation and gallery.
    _append(
        root,
        "training/views.py",
        """
        from typing import TYPE_CHECKING

        from annotation.models import Ranking
        from gallery.models import Image

        if TYPE_CHECKING:
            import torch


        def _panel():
            import torch
            from training.ml.world import default_panel

            return default_panel, torch, Ranking, Image
        """,
        "TYPE_CHECKING",
    )
    _append(root, "training/ml/common.py", "from rankmath.pairs import pairs_from_ordering\n", "rankmath")
    result = _run_checker(root)
    assert result.returncode == 0, result.stdout


BEHAVIOUR = """
import importlib, json, sys
import django

django.setup()
from django.conf import settings

GPU = ("torch", "diffusers", "transformers", "peft", "accelerate")


def loaded():
    return sorted(name for name in sys.modules if name.split(".")[0] in GPU)


importlib.import_module(settings.ROOT_URLCONF)
first = loaded()
culprits = {}
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
    if loaded() and not culprits:
        culprits[name] = loaded()[:5]
print(json.dumps({"after_urlconf": first, "culprits": culprits, "loaded": loaded()[:5]}))
"""


def test_a_web_process_loading_every_url_view_api_and_admin_module_never_loads_torch():
    modules = [
        check_imports.module_name(path.relative_to(ROOT))[0]
        for path in check_imports.python_files(ROOT)
        if check_imports.is_web_module(path.relative_to(ROOT).as_posix())
    ]
    # Every app's pages, API and admin are among them (and the checker's own list is not empty by mistake).
    for required in ("gallery.views", "gallery.admin", "annotation.views", "annotation.views_research",
                     "annotation.api", "annotation.admin", "training.views", "training.admin", "config.urls"):  # fmt: skip
        assert required in modules
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    result = subprocess.run(
        [sys.executable, "-c", BEHAVIOUR, json.dumps(modules)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report == {"after_urlconf": [], "culprits": {}, "loaded": []}
