from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.ml.blip_folder import save_tiny_blip_itm
from training.ml.preprocess import PreprocessConfig, preprocess_images
from training.ml.reward.checkpoint import load_reward_model, save_reward_model
from training.ml.reward.config import RewardModelConfig, VisionSpec
from training.ml.reward.model import build_blip_tokenizer, build_reward_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny():
    return build_reward_model(RewardModelConfig.tiny("attribute_binding"), seed=0)


def test_tokenizer_is_bert_uncased_plus_blip_dec_and_enc_tokens():
    tok = build_blip_tokenizer()
    assert len(tok) == 30524
    assert tok.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [30522, 30523]
    assert tok.bos_token == "[DEC]" and tok.enc_token_id == 30523
    ids = tok("A Red cube")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "a", "red", "cube", "[SEP]"]


def test_first_token_is_enc_for_blip_itm_and_cls_on_request(tiny):
    ids, mask = tiny.tokenize(["a red cube", "two dogs on a long bench"])
    assert ids[:, 0].tolist() == [30523, 30523]
    assert mask[0].sum() < mask[1].sum()  # padded to the longest prompt
    cls_model = build_reward_model(dataclasses.replace(tiny.config, first_token="cls"), seed=0)
    assert cls_model.tokenize(["a red cube"])[0][0, 0].item() == 101


def test_score_head_follows_imagereward_dims():
    config = RewardModelConfig.small(
        "spatial",
        vision=VisionSpec(
            hidden_size=64,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=16,
            patch_size=8,
        ),
    )
    model = build_reward_model(config, seed=0)
    linears = [m for m in model.head.layers if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (128, 1024),
        (1024, 128),
        (128, 64),
        (64, 16),
        (16, 1),
    ]
    assert [m.p for m in model.head.layers if isinstance(m, torch.nn.Dropout)] == [0.2, 0.2, 0.1]


def test_score_returns_one_normalised_score_per_image_and_depends_on_prompt_and_image(tiny):
    tiny.eval()
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 48, 40, generator=gen)
    # Spread the head so scores differ well above float noise.
    with torch.no_grad():
        for m in tiny.head.layers:
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, std=0.5)
    s = tiny.score(["a red cube", "a red cube", "a blue ball"], images)
    assert s.shape == (3,)
    same_image = tiny.score(["a red cube", "a blue ball"], images[:1].expand(2, -1, -1, -1))
    assert abs(same_image[0] - same_image[1]) > 1e-4
    assert abs(s[0] - s[1]) > 1e-4


def test_images_of_different_sizes_score_as_each_would_alone(tiny):
    tiny.eval()
    gen = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 32, 32, generator=gen), torch.rand(3, 48, 48, generator=gen)]
    together = tiny.score_images(["a red cube", "a red cube"], images)
    alone = [tiny.score(["a red cube"], image.unsqueeze(0))[0] for image in images]
    torch.testing.assert_close(together, torch.stack(alone))


def test_score_applies_stored_normalisation(tiny):
    tiny.eval()
    images = torch.rand(2, 3, 32, 32)
    raw = tiny.raw_score(["x", "y"], images)
    tiny.set_normalization(0.25, 4.0)
    try:
        assert torch.allclose(tiny.score(["x", "y"], images), (raw - 0.25) / 4.0)
    finally:
        tiny.set_normalization(0.0, 1.0)
    with pytest.raises(ValueError):
        tiny.set_normalization(0.0, 0.0)


def test_score_is_differentiable_wrt_images_and_matches_finite_differences(tiny):
    model = build_reward_model(tiny.config, seed=1).double().eval()
    with torch.no_grad():
        for m in model.head.layers:
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.normal_(m.weight, std=0.5)
    # Off the model's 32x32 size, so the gradient flows through the bicubic antialiased resize too.
    images = torch.rand(2, 3, 40, 40, dtype=torch.float64).mul(0.8).add(0.1).requires_grad_(True)
    score = model.score(["a cat left of a dog", "a cat"], images).sum()
    (grad,) = torch.autograd.grad(score, images)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    direction = torch.randn_like(images)
    eps = 1e-5
    with torch.no_grad():
        plus = model.score(["a cat left of a dog", "a cat"], images + eps * direction).sum()
        minus = model.score(["a cat left of a dog", "a cat"], images - eps * direction).sum()
    numeric = (plus - minus) / (2 * eps)
    assert (grad * direction).sum().item() == pytest.approx(numeric.item(), rel=1e-4, abs=1e-9)


def test_training_step_changes_trainable_parameters_and_leaves_frozen_ones(tiny):
    config = dataclasses.replace(tiny.config, freeze_fraction=0.5)
    model = build_reward_model(config, seed=0).train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("vision_model.encoder.layers.0.") for n in frozen)
    assert any(n.startswith("text_encoder.encoder.layer.0.") for n in frozen)
    assert "vision_model.embeddings.patch_embedding.weight" in frozen
    assert "text_encoder.embeddings.word_embeddings.weight" in frozen
    assert any(n.startswith("vision_model.encoder.layers.1.") for n in trainable)
    assert any(n.startswith("head.") for n in trainable)

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    images = torch.rand(4, 3, 32, 32)
    for _ in range(2):
        s = model.raw_score(["a red cube", "a red cube", "a dog", "a dog"], images)
        # An absolute target: the pairwise loss is blind to constant offsets, so it gives the head's
        # later biases exactly zero gradient and they would (correctly) not move.
        loss = (s - torch.tensor([1.0, -1.0, 2.0, 0.0])).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in frozen.items())
    changed = [n for n, v in trainable.items() if not torch.equal(after[n], v)]
    assert len(changed) == len(trainable), sorted(set(trainable) - set(changed))[:5]


def test_freeze_fraction_of_itercomp_freezes_first_70_percent_of_layers():
    config = RewardModelConfig.small("spatial", freeze_fraction=0.7)  # 4 layers each -> int(2.8) = 2 frozen
    model = build_reward_model(config, seed=0)
    frozen_vision = {
        i
        for i, layer in enumerate(model.vision_model.encoder.layers)
        if not any(p.requires_grad for p in layer.parameters())
    }
    frozen_text = {
        i
        for i, layer in enumerate(model.text_encoder.encoder.layer)
        if not any(p.requires_grad for p in layer.parameters())
    }
    assert frozen_vision == {0, 1} and frozen_text == {0, 1}
    model.freeze(0.0)
    assert all(p.requires_grad for p in model.parameters())


def test_vision_initializer_range_of_blip_default_is_refused():
    with pytest.raises(ValueError, match="initializer_range"):
        VisionSpec(initializer_range=1e-10)


def test_config_needs_exactly_one_backbone_source():
    with pytest.raises(ValueError, match="either pretrained_path"):
        RewardModelConfig(category="spatial")
    with pytest.raises(ValueError, match="either pretrained_path"):
        RewardModelConfig(category="spatial", pretrained_path="/x", vision=VisionSpec())
    with pytest.raises(ValueError, match="category"):
        RewardModelConfig.tiny("composition")


def test_builds_from_a_local_blip_itm_folder_and_keeps_its_weights(tmp_path):
    blip = save_tiny_blip_itm(tmp_path, seed=3, image_std=0.25)

    model = build_reward_model(
        RewardModelConfig(category="non_spatial", pretrained_path=str(tmp_path)), seed=0
    )
    assert torch.equal(
        model.vision_model.encoder.layers[1].mlp.fc1.weight,
        blip.vision_model.encoder.layers[1].mlp.fc1.weight,
    )
    assert torch.equal(
        model.text_encoder.encoder.layer[1].crossattention.self.key.weight,
        blip.text_encoder.encoder.layer[1].crossattention.self.key.weight,
    )
    assert model.preprocess == PreprocessConfig(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    images = torch.rand(2, 3, 64, 64)
    assert model.eval().score(["a dog", "a cat"], images).shape == (2,)

    # The checkpoint carries the BLIP configs and tokenizer: it loads without the original folder.
    save_reward_model(model, tmp_path / "ckpt")
    for item in tmp_path.iterdir():
        if item.name != "ckpt":
            item.unlink()
    loaded = load_reward_model(tmp_path / "ckpt")
    assert torch.equal(loaded.score(["a dog", "a cat"], images), model.score(["a dog", "a cat"], images))


def test_head_init_is_imagereward_by_default_and_pytorch_on_request():
    ir = build_reward_model(RewardModelConfig.tiny("spatial"), seed=0).head.layers[0]
    pt = build_reward_model(RewardModelConfig.tiny("spatial", head_init="pytorch"), seed=0).head.layers[0]
    assert ir.weight.std().item() == pytest.approx(1 / 33, rel=0.05) and torch.all(ir.bias == 0)
    # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), std 1/sqrt(3 fan_in).
    assert pt.weight.std().item() == pytest.approx((3 * 32) ** -0.5, rel=0.05)
    with pytest.raises(ValueError, match="head_init"):
        RewardModelConfig.tiny("spatial", head_init="xavier")


def test_itm_head_starts_the_score_at_the_folders_matching_margin_and_survives_a_checkpoint(tmp_path):
    blip = save_tiny_blip_itm(tmp_path, seed=5).eval()
    model = build_reward_model(
        RewardModelConfig(category="spatial", pretrained_path=str(tmp_path), head_init="itm"), seed=0
    ).eval()
    assert torch.equal(model.itm_head.weight, blip.itm_head.weight)
    prompts = ["a red circle", "a blue square to the left of a cat"]
    images = torch.rand(2, 3, 32, 32)
    input_ids, attention_mask = model.tokenize(prompts)
    with torch.no_grad():
        # BLIP's own ITM forward on the same [ENC] tokens and normalised pixels.
        logits = blip(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=preprocess_images(images, model.preprocess),
            use_itm_head=True,
        ).itm_score
        margin = logits[:, 1] - logits[:, 0]
        fused = model.text_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=model.encode_images(preprocess_images(images, model.preprocess)),
        ).last_hidden_state[:, 0, :]
        mlp = model.head(fused)
        raw = model.raw_score(prompts, images)
    # raw score = ITM margin + the ImageReward MLP, which starts near zero (N(0, 1/(fan_in+1)) weights).
    torch.testing.assert_close(raw, margin + mlp)
    assert mlp.abs().max() < 1e-3 < margin.abs().max()

    save_reward_model(model, tmp_path / "ckpt")
    loaded = load_reward_model(tmp_path / "ckpt")
    assert torch.equal(loaded.itm_head.weight, model.itm_head.weight)
    torch.testing.assert_close(loaded.raw_score(prompts, images), raw)
    # The MLP-only default has no matching head; a from-scratch backbone cannot have one.
    assert (
        build_reward_model(RewardModelConfig(category="spatial", pretrained_path=str(tmp_path))).itm_head
        is None
    )
    with pytest.raises(ValueError, match="pretrained BLIP folder"):
        RewardModelConfig.tiny("spatial", head_init="itm")
