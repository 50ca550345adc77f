from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from annotation.services.consensus import consensus_recompute
from tests.consensus import factories as f

# Hugging Face `datasets` reads these when first imported: never reach the network from the suite.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# (prompt, category, subcategory, split, iteration, ranking source)
TASKS = [
    ("a red cube and a blue ball", "attribute_binding", "color", "train", 0, "browser"),
    ("a dog on the left of a cat", "spatial", None, "val", 0, "browser"),
    ("a man holding an umbrella", "non_spatial", None, "test", 0, "browser"),
    ("a cat above a dog", "spatial", None, "train", 1, "browser"),
    ("a bird below a plane", "spatial", None, "train", 1, "reward_model"),
]


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # Many users per test: real PBKDF2 costs ~0.5 s each on the shared 2-core machine and tests nothing here.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def dataset(make_user, settings):
    """Five six-image tasks with a consensus each (75 pairs): three categories, three splits, two
    iterations, one task ranked only by the reward model (model pairs)."""
    settings.CONSENSUS_MAX_RANKINGS = 3  # keep the tasks as they are
    experts = [make_user("annotator") for _ in range(3)]
    tasks = []
    for k, (text, category, sub, split, iteration, source) in enumerate(TASKS):
        p = f.prompt(text, category, sub=sub, split=split, source="t2i-compbench", licence="MIT")
        t, ids = f.task(p, iteration=iteration)
        orders = (
            [ids, ids, ids[:3] + [ids[4], ids[3], ids[5]]] if source == "browser" else [list(reversed(ids))]
        )
        for expert, order in zip(experts, orders, strict=False):
            f.rank(t, expert, [[i] for i in order], source=source)
        consensus_recompute(task_id=t.pk)
        tasks.append(SimpleNamespace(task=t, ids=ids, prompt=p, index=k))
    return SimpleNamespace(experts=experts, tasks=tasks)


@pytest.fixture
def researcher_client(client, make_user):
    client.force_login(make_user("researcher"))
    return client
