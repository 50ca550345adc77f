"""One writer per status field: ``RankingTask.status`` is written only by ``annotation/services/task_status.py``
and ``TaskClaim.status`` only by ``annotation/services/claims.py``.

The check reads every Python file of the project (tests and migrations aside) and reports a write of either
field anywhere else: an ORM ``update``/``create``/``get_or_create``/``update_or_create``/``bulk_update`` that
sets ``status`` on a queryset of the model or to a member of its status enum, an assignment of an enum member
to a ``.status`` attribute, and hand-written SQL ``UPDATE <the model's table> SET … status =``. It sees what
code review would: a write through an untyped queryset with a bare string value (``qs.update(status="open")``)
is not recognised.
"""

from __future__ import annotations

import ast
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from annotation.models import ClaimStatus, RankingTask, TaskClaim, TaskStatus

ROOT = Path(__file__).resolve().parents[2]
# Tests set rows up in any state they need; migrations are history.
SKIPPED_DIRS = frozenset(
    {".git", ".venv", "var", "node_modules", "static", "tests", "migrations", "__pycache__"}
)
ORM_WRITES = frozenset({"update", "create", "get_or_create", "update_or_create"})


@dataclass(frozen=True)
class StatusField:
    model: str
    enum: str
    values: frozenset[str]
    table: str
    writer: str  # path relative to the project root


FIELDS = (
    StatusField(
        "RankingTask",
        "TaskStatus",
        frozenset(TaskStatus.values),
        RankingTask._meta.db_table,
        "annotation/services/task_status.py",
    ),
    StatusField(
        "TaskClaim",
        "ClaimStatus",
        frozenset(ClaimStatus.values),
        TaskClaim._meta.db_table,
        "annotation/services/claims.py",
    ),
)
TASK, CLAIM = FIELDS


def _aliases(tree: ast.AST, name: str) -> set[str]:
    """``name`` and whatever this module imports it as."""
    found = {name}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            found.update(alias.asname for alias in node.names if alias.name == name and alias.asname)
    return found


def _mentions(node: ast.AST | None, names: set[str]) -> bool:
    if node is None:
        return False
    return any(
        (isinstance(sub, ast.Name) and sub.id in names)
        or (isinstance(sub, ast.Attribute) and sub.attr in names)
        for sub in ast.walk(node)
    )


def _string_list_has(node: ast.AST | None, value: str) -> bool:
    return isinstance(node, ast.List | ast.Tuple | ast.Set) and any(
        isinstance(e, ast.Constant) and e.value == value for e in node.elts
    )


def _sql_pattern(field: StatusField) -> re.Pattern[str]:
    table = rf"(?:{re.escape(field.table)}|\{{{field.model}\._meta\.db_table\}})"
    return re.compile(
        rf"\bUPDATE\s+\W*{table}\W*\s+(?:AS\s+\w+\s+)?SET\b(?:(?!\bWHERE\b).)*?\bstatus\b\s*=", re.I | re.S
    )


def status_writes(source: str, field: StatusField) -> list[tuple[int, str]]:
    """(line, code) of every write of ``field`` in one module's source."""
    tree = ast.parse(source)
    models, enums = _aliases(tree, field.model), _aliases(tree, field.enum)
    sql = _sql_pattern(field)
    # An f-string is matched whole; its literal parts alone would report it twice.
    in_fstrings = {
        id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values
    }
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if id(node) in in_fstrings:
            continue
        hit = False
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            receiver, method = node.func.value, node.func.attr
            keywords = {kw.arg: kw.value for kw in node.keywords if kw.arg}
            if method in ORM_WRITES:
                values = [keywords.get("status")]
                for defaults in ("defaults", "create_defaults"):
                    if isinstance(keywords.get(defaults), ast.Dict):
                        d = keywords[defaults]
                        values += [v for k, v in zip(d.keys, d.values, strict=True) if _is_status_key(k)]
                values = [v for v in values if v is not None]
                hit = bool(values) and (
                    _mentions(receiver, models) or any(_mentions(v, enums) for v in values)
                )
            elif method == "bulk_update":
                fields = keywords.get("fields", node.args[1] if len(node.args) > 1 else None)
                hit = _mentions(receiver, models) and _string_list_has(fields, "status")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr":
            hit = (
                len(node.args) == 3
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value == "status"
                and _mentions(node.args[2], enums)
            )
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            hit = any(
                isinstance(t, ast.Attribute) and t.attr == "status" for tgt in targets for t in ast.walk(tgt)
            ) and _mentions(node.value, enums)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            hit = bool(sql.search(node.value))
        elif isinstance(node, ast.JoinedStr):
            hit = bool(sql.search(ast.unparse(node)))
        if hit:
            found.append((node.lineno, ast.get_source_segment(source, node) or ast.unparse(node)))
    return sorted(set(found))


def _is_status_key(key: ast.AST | None) -> bool:
    return isinstance(key, ast.Constant) and key.value == "status"


def _python_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*.py")):
        if not SKIPPED_DIRS.intersection(path.relative_to(root).parts):
            yield path


def foreign_writes(root: Path, field: StatusField) -> list[str]:
    """``path:line: code`` of every write of ``field`` outside its writer module, under ``root``."""
    report = []
    for path in _python_files(root):
        relative = path.relative_to(root).as_posix()
        if relative == field.writer:
            continue
        for line, code in status_writes(path.read_text(encoding="utf-8"), field):
            report.append(f"{relative}:{line}: {code.splitlines()[0]}")
    return report


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f"{f.model}.status")
def test_only_the_writer_module_writes_the_status_field(field):
    assert foreign_writes(ROOT, field) == [], (
        f"{field.model}.status is written outside {field.writer}; call a function of that module instead"
    )


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f"{f.model}.status")
def test_the_check_recognises_the_writes_the_writer_module_makes(field):
    # Were the detector blind to the forms the real writer uses, the test above would pass vacuously.
    writes = status_writes((ROOT / field.writer).read_text(encoding="utf-8"), field)
    assert len(writes) >= 3, writes


WRITES = {
    "queryset update": (TASK, "RankingTask.objects.filter(pk=1).update(status=TaskStatus.RETIRED)"),
    "update with a literal": (TASK, "RankingTask.objects.filter(pk=1).update(status='complete')"),
    "related-manager update": (CLAIM, "task.claims.filter(x=1).update(status=ClaimStatus.EXPIRED)"),
    "create in a state": (TASK, "RankingTask.objects.create(prompt=p, status=TaskStatus.COMPLETE)"),
    "update_or_create defaults": (
        TASK,
        "RankingTask.objects.update_or_create(pk=1, defaults={'status': TaskStatus.OPEN})",
    ),
    "bulk_update": (TASK, "RankingTask.objects.bulk_update(tasks, ['status'])"),
    "attribute assignment": (TASK, "task.status = TaskStatus.OPEN\ntask.save()"),
    "aliased enum": (
        CLAIM,
        "from annotation.models import ClaimStatus as CS\nclaim.status = CS.RELEASED",
    ),
    "setattr": (TASK, "setattr(task, 'status', TaskStatus.RETIRED)"),
    "raw SQL": (TASK, "cursor.execute('UPDATE annotation_rankingtask SET status = %s WHERE id = %s', a)"),
    "SQL in an f-string": (
        CLAIM,
        'SQL = f"""WITH c AS (UPDATE {TaskClaim._meta.db_table} SET status = %(s)s WHERE id = 1) SELECT 1"""',
    ),
}

READS = [
    "RankingTask.objects.filter(status=TaskStatus.OPEN).count()",
    "TaskImage.objects.exclude(task__status=TaskStatus.RETIRED)",
    "if task.status == TaskStatus.RETIRED: pass",
    "training_round.status = RoundStatus.DONE",
    "GenerationJob.objects.filter(pk=1).update(status='running')",
    "RankingTask.objects.create(prompt=p, required_rankings=3)",
    "RankingTask.objects.filter(pk=1).update(required_rankings=4)",
    "cursor.execute('SELECT status FROM annotation_rankingtask WHERE status = %s', ['open'])",
    "cursor.execute('UPDATE annotation_taskclaim SET expires_at = now() WHERE status = %s', ['active'])",
]


@pytest.mark.parametrize("case", WRITES.keys())
def test_the_check_reports_each_form_of_write(case):
    field, source = WRITES[case]
    assert len(status_writes(source, field)) == 1
    other = CLAIM if field is TASK else TASK
    assert status_writes(source, other) == []


@pytest.mark.parametrize("source", READS)
def test_the_check_leaves_reads_and_other_fields_alone(source):
    assert all(status_writes(source, field) == [] for field in FIELDS)


def test_a_write_added_to_a_copy_of_the_project_is_reported_with_its_place(tmp_path):
    for package in ("annotation", "training", "gallery"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    assert foreign_writes(tmp_path, TASK) == []
    target = tmp_path / "annotation" / "services" / "imports.py"
    lines = target.read_text(encoding="utf-8").splitlines()
    lines.append(
        "RankingTask.objects.filter(pk=1, status=TaskStatus.OPEN).update(status=TaskStatus.COMPLETE)"
    )
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert foreign_writes(tmp_path, TASK) == [
        f"annotation/services/imports.py:{len(lines)}: "
        "RankingTask.objects.filter(pk=1, status=TaskStatus.OPEN).update(status=TaskStatus.COMPLETE)"
    ]
    # Tests and migrations may set up any state.
    (tmp_path / "annotation" / "migrations" / "9999_write.py").write_text("task.status = TaskStatus.OPEN\n")
    assert len(foreign_writes(tmp_path, TASK)) == 1
