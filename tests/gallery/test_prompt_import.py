"""Prompt import from T2I-CompBench files and category names."""

from __future__ import annotations

import shutil

import pytest
from django.core.management import CommandError, call_command

from gallery.models import Prompt
from gallery.promptfiles import (
    UnknownCategory,
    category_from_file_name,
    dedupe_prompts,
    read_prompt_file,
    resolve_category,
)

from .conftest import COMPBENCH

needs_compbench = pytest.mark.skipif(
    not COMPBENCH.is_dir(),
    reason=f"T2I-CompBench prompt files not found at {COMPBENCH} (shared/ beside the repo)",
)
EXPECTED = {
    "color": 679,
    "shape": 685,
    "texture": 695,
    "spatial": 700,
    "non_spatial": 700,
}


def _count(stem: str) -> int:
    category, sub = resolve_category(stem)
    qs = Prompt.objects.filter(category__slug=category)
    return qs.filter(subcategory__slug=sub).count() if sub else qs.filter(subcategory=None).count()


@needs_compbench
@pytest.mark.django_db
def test_compbench_files_give_exact_unique_counts_and_reimport_adds_nothing(capsys):
    files = [str(COMPBENCH / f"{stem}_train.txt") for stem in EXPECTED]
    call_command("import_prompts", *files)
    out = capsys.readouterr().out
    assert "color_train.txt → Attribute binding / Color: 679 unique prompts (21 duplicate" in out
    assert {stem: _count(stem) for stem in EXPECTED} == EXPECTED
    assert Prompt.objects.count() == sum(EXPECTED.values())
    assert set(Prompt.objects.values_list("licence", flat=True)) == {"MIT License"}
    assert set(Prompt.objects.values_list("split", flat=True)) == {"train", "val", "test"}

    call_command("import_prompts", *files)
    again = capsys.readouterr().out
    assert Prompt.objects.count() == sum(EXPECTED.values())
    assert again.count("0 new,") == len(EXPECTED)


@needs_compbench
@pytest.mark.django_db
def test_complex_file_is_refused_unless_a_category_is_named(tmp_path):
    with pytest.raises(CommandError, match=r"complex_train.txt: unknown category 'complex'.*--category"):
        call_command("import_prompts", str(COMPBENCH / "complex_train.txt"))
    assert Prompt.objects.count() == 0
    # A refused file stops the whole run before anything is written, even the good files named with it.
    with pytest.raises(CommandError):
        call_command(
            "import_prompts", str(COMPBENCH / "color_train.txt"), str(COMPBENCH / "complex_train.txt")
        )
    assert Prompt.objects.count() == 0

    call_command("import_prompts", str(COMPBENCH / "complex_train.txt"), "--category", "non_spatial")
    assert _count("non_spatial") == 700


def test_file_stems_pick_the_longest_known_category():
    assert category_from_file_name("non_spatial_train.txt") == ("non_spatial", None)
    assert category_from_file_name("spatial_val.txt") == ("spatial", None)
    assert category_from_file_name("color.txt") == ("attribute_binding", "color")
    with pytest.raises(UnknownCategory, match="unknown category 'colorful'"):
        category_from_file_name("colorful_train.txt")
    assert resolve_category("attribute_binding/texture") == ("attribute_binding", "texture")
    assert resolve_category("Non-Spatial") == ("non_spatial", None)
    with pytest.raises(UnknownCategory, match="needs a subcategory"):
        resolve_category("attribute_binding")
    with pytest.raises(UnknownCategory, match="unknown category 'complex'"):
        resolve_category("complex")


def test_dedupe_normalises_whitespace_and_counts_what_it_drops(tmp_path):
    path = tmp_path / "shape_train.txt"
    path.write_bytes("\ufeffa round clock\r\n  a round   clock \r\n\r\na square box\r\n".encode())
    parsed = read_prompt_file(path)
    assert parsed.prompts == ["a round clock", "a square box"]
    assert (parsed.lines, parsed.empty, parsed.duplicates) == (4, 1, 1)
    assert dedupe_prompts(["A b", "a b"]).prompts == ["A b", "a b"]  # case is kept: stored text is exact


@pytest.mark.django_db
def test_missing_file_and_bad_category_option_are_command_errors(tmp_path):
    with pytest.raises(CommandError, match="no such file"):
        call_command("import_prompts", str(tmp_path / "color_train.txt"))
    shutil.copy(__file__, tmp_path / "color_train.txt")
    with pytest.raises(CommandError, match="unknown category 'stripes'"):
        call_command("import_prompts", str(tmp_path / "color_train.txt"), "--category", "stripes")
