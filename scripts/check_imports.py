#!/usr/bin/env python3
"""Check the import contracts between the project's layers; exit 1 on any violation.

    python3 scripts/check_imports.py [--root DIR]

Reads every ``.py`` file of the layers below (migrations excluded) with :mod:`ast`, so it needs no
dependency, no database and no Django: ``.ci/run`` calls it before ``make test`` creates the venv, and
``tests/foundation/test_import_contracts.py`` runs it in the suite. Every import counts: module level,
inside functions and classes, under ``if TYPE_CHECKING``, relative ones resolved against the file's
package, and ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name.

The layering (each arrow points one way; a layer that does not exist yet, such as ``jobs/``, has no files
to check and starts being checked when it appears):

* ``rankmath/`` (Django-free ranking mathematics) imports nothing of Django, DRF, Celery, the apps, the
  project configuration or the GPU stack.
* ``training/ml/`` (the Django-free ML core) imports nothing of Django, DRF, Celery, the apps, the project
  configuration, nor ``training`` outside ``training.ml``; it may import ``rankmath``.
* ``jobs/`` imports no ``gallery``, ``annotation``, ``training``.
* ``gallery/`` imports no ``annotation``, ``training``.
* ``annotation/`` imports no ``training``.

And the web rule: a *web module* (every module of ``config``, ``gallery``, ``annotation``, ``training``
and ``jobs`` except ``training/ml/`` and the worker-only modules in :data:`WORKER_ONLY`) may import the GPU
stack (torch, diffusers, transformers, peft, accelerate), the ML core (``training.ml``, except the
torch-free modules in :data:`TORCH_FREE_ML`) or a worker-only module only inside a function, so that a
web process never loads torch. Worker-only modules are the ones
the web process never imports at module level: the Celery stages, reached only from inside
``training.runner.stage_run`` on a worker. ``if TYPE_CHECKING:`` blocks never run, so the web rule skips them.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DJANGO_STACK = ("django", "rest_framework", "drf_spectacular", "celery", "django_celery_results",
                "django_celery_beat", "django_htmx", "template_partials")  # fmt: skip
APPS = ("gallery", "annotation", "training", "jobs")
GPU_STACK = ("torch", "diffusers", "transformers", "peft", "accelerate")
WEB_PACKAGES = ("config", "gallery", "annotation", "training", "jobs")
# Modules only a worker imports (from inside a function); they may import the GPU stack at module level.
WORKER_ONLY = ("training/stages.py",)
# ML-core modules written without torch so the web side can use them at module level: the round
# configuration the admin's form builds. (The behavioural test imports every web module and checks torch
# stays unloaded, so a torch import creeping in here fails too.)
TORCH_FREE_ML = ("training.ml.algorithm1.config",)


@dataclass(frozen=True)
class Rule:
    """Files under ``layer`` (a folder relative to the root) must not import ``forbidden`` (module prefixes),
    except the prefixes in ``allowed`` (which take precedence)."""

    layer: str
    forbidden: tuple[str, ...]
    allowed: tuple[str, ...]
    text: str


LAYER_RULES: tuple[Rule, ...] = (
    Rule(
        "rankmath",
        (*DJANGO_STACK, *APPS, "config", *GPU_STACK),
        (),
        "rankmath imports nothing of Django, the apps or the GPU stack",
    ),
    Rule(
        "training/ml",
        (*DJANGO_STACK, "gallery", "annotation", "jobs", "config", "training"),
        ("training.ml",),
        "the ML core (training/ml) imports nothing of Django or the apps",
    ),
    Rule(
        "jobs",
        ("gallery", "annotation", "training"),
        (),
        "jobs never imports gallery, annotation or training",
    ),
    Rule("gallery", ("annotation", "training"), (), "gallery never imports annotation or training"),
    Rule("annotation", ("training",), (), "annotation never imports training"),
)
WEB_RULE_TEXT = "web modules import the GPU stack, training.ml and worker-only modules only inside functions"


@dataclass(frozen=True)
class Import:
    module: str  # absolute dotted name
    line: int
    in_function: bool
    type_checking_only: bool


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    module: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line} imports {self.module} ({self.rule})"


def module_name(relative: Path) -> tuple[str, str]:
    """(the module's dotted name, the package its relative imports start from)."""
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def _resolve(package: str, level: int, module: str | None) -> str | None:
    if level == 0:
        return module
    base = package.split(".") if package else []
    if level - 1 >= len(base):
        return None  # beyond the top-level package: Python refuses it too
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base) or None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _is_module(root: Path, dotted: str) -> bool:
    path = root.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(tree: ast.AST, package: str, root: Path) -> Iterator[Import]:
    """Every import in the tree, with whether it sits inside a function and whether only type checkers see it.

    ``from X import a`` counts as importing ``X.a`` when that is a module of the checkout, else ``X``.
    """

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> Iterator[Import]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno, in_function, type_checking)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(package, node.level, node.module)
            if base is not None:
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    imported = submodule if alias.name != "*" and _is_module(root, submodule) else base
                    yield Import(imported, node.lineno, in_function, type_checking)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__") and node.args:
                first = node.args[0]
                if (
                    isinstance(first, ast.Constant)
                    and isinstance(first.value, str)
                    and first.value[:1] != "."
                ):
                    yield Import(first.value, node.lineno, in_function, type_checking)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            in_function = True
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from visit(child, in_function, True)
            for child in node.orelse:
                yield from visit(child, in_function, type_checking)
            return
        for child in ast.iter_child_nodes(node):
            yield from visit(child, in_function, type_checking)

    yield from visit(tree, False, False)


def _matches(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def _under(relative: str, folder: str) -> bool:
    return relative == folder or relative.startswith(folder + "/")


def python_files(root: Path) -> Iterator[Path]:
    for package in sorted({*WEB_PACKAGES, "rankmath"}):
        folder = root / package
        if folder.is_dir():
            for path in sorted(folder.rglob("*.py")):
                if "migrations" not in path.relative_to(root).parts:
                    yield path


def is_web_module(relative: str) -> bool:
    """Whether a web process may load the file (``relative`` is a POSIX path from the root)."""
    return (
        relative.split("/", 1)[0] in WEB_PACKAGES
        and not _under(relative, "training/ml")
        and relative not in WORKER_ONLY
        and "migrations" not in relative.split("/")
    )


def worker_only_modules() -> tuple[str, ...]:
    return tuple(module_name(Path(path))[0] for path in WORKER_ONLY)


def check_file(root: Path, path: Path) -> list[Violation]:
    relative = path.relative_to(root)
    shown = relative.as_posix()
    _, package = module_name(relative)
    tree = ast.parse(path.read_bytes(), filename=shown)
    web = is_web_module(shown)
    worker_only = worker_only_modules()
    rules = [rule for rule in LAYER_RULES if _under(shown, rule.layer)]
    # The most specific layer decides (training/ml has its own rule; training as a whole has none).
    rules = [rule for rule in rules if len(rule.layer) == max(len(r.layer) for r in rules)] if rules else []
    found: dict[tuple[int, str, str], Violation] = {}
    for item in imports_of(tree, package, root):
        for rule in rules:
            if _matches(item.module, rule.forbidden) and not _matches(item.module, rule.allowed):
                found.setdefault(
                    (item.line, rule.text, item.module), Violation(shown, item.line, item.module, rule.text)
                )
        if (
            web
            and not item.in_function
            and not item.type_checking_only
            and _matches(item.module, (*GPU_STACK, "training.ml", *worker_only))
            and not _matches(item.module, TORCH_FREE_ML)
        ):
            found.setdefault(
                (item.line, WEB_RULE_TEXT, item.module),
                Violation(shown, item.line, item.module, WEB_RULE_TEXT),
            )
    return sorted(found.values(), key=lambda v: (v.line, v.rule, v.module))


def check(root: Path = ROOT) -> tuple[list[Violation], int]:
    """(every violation under ``root``, the number of files read)."""
    violations: list[Violation] = []
    files = 0
    for path in python_files(root):
        files += 1
        violations.extend(check_file(root, path))
    return violations, files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="the repository root (default: this checkout)"
    )
    args = parser.parse_args(argv)
    violations, files = check(args.root.resolve())
    for violation in violations:
        print(violation)
    if violations:
        print(f"import contracts: {len(violations)} violation(s) in {files} files", file=sys.stderr)
        return 1
    print(f"import contracts: {files} files, no violations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
