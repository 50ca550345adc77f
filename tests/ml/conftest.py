from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A small world base model (random weights) saved as the loop and the steps load one."""
    from tests.ml.test_refl_world import SMALL
    from training.ml.world.model import WorldDiffusionModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base")
    WorldDiffusionModel(SMALL).save_pretrained(path)
    return path
