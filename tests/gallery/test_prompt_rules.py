"""Prompt rules (NFC, invisible characters stripped, direction/control characters and over-long prompts
refused before the database) and pinned splits (--split) that survive re-import and reach training."""

from __future__ import annotations

import json

import pytest
from django.core.management import CommandError, call_command

from gallery.models import Image, Prompt
from gallery.services.prompts import category_get, prompt_ensure, prompts_import_texts
from gallery.splits import PROMPT_MAX_CHARS, PromptRejected, normalize_prompt_text, split_for_text

pytestmark = pytest.mark.django_db


def _color():
    return category_get(("attribute_binding", "color"))


def test_composed_and_decomposed_text_and_invisible_characters_are_one_prompt(tmp_path):
    path = tmp_path / "color_train.txt"
    path.write_text("a café table\na cafe\u0301 table\na caf\u00e9\u200b table\n\ufeffa café\u00ad table\n")
    call_command("import_prompts", str(path))
    assert list(Prompt.objects.values_list("text", flat=True)) == ["a caf\u00e9 table"]


def test_a_prompt_at_the_limit_is_stored_and_one_over_is_refused_before_the_database():
    category, sub = _color()
    longest = "a" * PROMPT_MAX_CHARS
    prompt, created = prompt_ensure(text=longest, category=category, subcategory=sub)
    assert created and len(prompt.text) == PROMPT_MAX_CHARS
    with pytest.raises(PromptRejected, match="1,001 characters, more than the limit of 1,000"):
        prompt_ensure(text=longest + "b", category=category, subcategory=sub)
    # Two long prompts that differ only at the end are distinct: the unique index is on a hash of the text.
    other, created = prompt_ensure(
        text="a" * (PROMPT_MAX_CHARS - 1) + "b", category=category, subcategory=sub
    )
    assert created and other.pk != prompt.pk


def test_multibyte_prompt_near_the_limit_fits_the_unique_index():
    # 1,000 four-byte characters are 4 kB of UTF-8: more than a btree entry holds (the old index failed).
    category, sub = _color()
    prompt, created = prompt_ensure(text="\U0001f600" * PROMPT_MAX_CHARS, category=category, subcategory=sub)
    assert created and Prompt.objects.get(pk=prompt.pk).text == prompt.text


def test_split_pins_new_and_existing_prompts_and_survives_reimport(tmp_path):
    texts = [f"a blue chair and a red lamp {n}" for n in range(30)]
    category, sub = _color()
    prompts_import_texts(texts=texts[:10], category=category, subcategory=sub)  # hash splits
    spatial, _ = category_get(("spatial", None))
    prompts_import_texts(texts=texts[:5], category=spatial)  # the same texts in another category
    path = tmp_path / "color_val.txt"
    path.write_text("\n".join(texts) + "\n")
    call_command("import_prompts", str(path), "--split", "test")
    assert set(Prompt.objects.values_list("split", flat=True)) == {"test"}
    assert Prompt.objects.filter(split_pinned=False).count() == 0
    # Re-import without --split, and a new category's import of the same texts, keep the pin.
    call_command("import_prompts", str(path))
    prompts_import_texts(texts=texts, category=spatial)
    assert set(Prompt.objects.values_list("split", flat=True)) == {"test"}
    assert any(split_for_text(t) == "train" for t in texts)  # without the pin some would be training
    # Moving a pinned prompt to another split is refused, naming it; nothing changes.
    with pytest.raises(CommandError, match="already pinned to another split"):
        call_command("import_prompts", str(path), "--split", "train")
    assert set(Prompt.objects.values_list("split", flat=True)) == {"test"}


def test_pinned_test_prompts_stay_out_of_reward_training_and_refl_pools(tmp_path):
    from annotation.services.consensus import consensus_recompute
    from tests.consensus import factories as f
    from training.ml.reward import assign_splits, read_pairs
    from training.stages import prompt_pools, write_training_pairs

    texts = [f"a mug on the left of a book {n}" for n in range(6)]
    spatial, _ = category_get(("spatial", None))
    from django.contrib.auth import get_user_model

    annotator = get_user_model().objects.create(username="pin-expert")
    for text in texts:
        t, ids = f.task(f.prompt(text, "spatial"))
        t.required_rankings = 1
        t.save(update_fields=["required_rankings"])
        f.rank(t, annotator, [[i] for i in ids])
        consensus_recompute(task_id=t.pk)
    held_out = tmp_path / "spatial_test.txt"
    held_out.write_text("\n".join(texts[:3]) + "\n")
    call_command("import_prompts", str(held_out), "--split", "test")

    pairs = tmp_path / "pairs.jsonl"
    assert write_training_pairs(spatial, 0, pairs) > 0
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    splits = {r["prompt"]: r["split"] for r in rows}
    assert {splits[t] for t in texts[:3]} == {"test"}
    records = assign_splits(read_pairs(pairs))  # the trainer keeps the export's split
    assert {r.split for r in records if r.prompt in texts[:3]} == {"test"}
    train, validation = prompt_pools([spatial])
    pooled = set(train.get("spatial", [])) | set(validation.get("spatial", []))
    assert not pooled & set(texts[:3])


def test_reimporting_an_export_under_another_generator_relabels_nothing_and_adds_no_task(tmp_path):
    from annotation.models import RankingTask
    from annotation.services.gallery_imports import ranked_gallery_import
    from gallery.services.generators import generators_ensure_itercomp_gallery
    from tests.gallery.conftest import png_bytes

    generators_ensure_itercomp_gallery()
    (tmp_path / "gen").mkdir()
    records = []
    for n in range(4):
        generations = []
        for k in range(3):
            (tmp_path / f"gen/{n}-{k}.png").write_bytes(png_bytes(500 + 10 * n + k))
            generations.append(f"gen/{n}-{k}.png")
        records.append({"id": str(n), "prompt": f"a kite above a tree {n}", "generations": generations,
                        "ranking": [1, 2, 3]})  # fmt: skip
    path = tmp_path / "spatial_ir.json"
    path.write_text(json.dumps(records))
    first = ranked_gallery_import(path=path, format="imagereward", generator="sdxl", annotator="ir1")
    assert first.rows_ok == 4
    labels = dict(Image.objects.values_list("pk", "generator__slug"))
    tasks = RankingTask.objects.count()
    again = ranked_gallery_import(path=path, format="imagereward", generator="sd15", annotator="ir1")
    assert again.rows_ok == 4 and again.images_created == 0 and again.images_generator_kept == 12
    assert dict(Image.objects.values_list("pk", "generator__slug")) == labels
    assert RankingTask.objects.count() == tasks
    assert "filed under another generator" in again.summary()


def test_normalisation_is_idempotent():
    for text in ["a  b", "cafe\u0301", "x\u200by", " \ufeffz "]:
        once = normalize_prompt_text(text)
        assert normalize_prompt_text(once) == once
