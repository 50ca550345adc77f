from __future__ import annotations

from django import forms

from gallery.models import Category, Generator, GeneratorKind
from training.ml.algorithm1.config import (
    SYNTHETIC_BASE,
    FeedbackStageConfig,
    PushBackConfig,
    RewardStageConfig,
    RoundConfig,
    RoundConfigError,
)

_R, _F, _P = RewardStageConfig(), FeedbackStageConfig(), PushBackConfig()


class RoundForm(forms.Form):
    categories = forms.ModelMultipleChoiceField(
        queryset=Category.objects.all(),
        widget=forms.CheckboxSelectMultiple,
        initial=lambda: Category.objects.all(),
    )
    base_model = forms.CharField(
        initial=SYNTHETIC_BASE,
        help_text="A local diffusers folder (SD1.x / SDXL) on the GPU workers, or 'synthetic-world'.",
    )
    base_generator = forms.ModelChoiceField(
        queryset=Generator.objects.filter(kind=GeneratorKind.BASE),
        required=False,
        help_text="The gallery generator whose images the base model made (optional).",
    )
    iterations = forms.IntegerField(min_value=1, max_value=10, initial=3)
    seed = forms.IntegerField(min_value=0, initial=0)
    reward_backbone = forms.ChoiceField(
        choices=[
            ("pretrained", "Pretrained BLIP, partly frozen (IterComp)"),
            ("scratch", "From-scratch BLIP"),
        ],
        initial=_R.backbone,
        required=False,
        help_text="Pretrained: the worker's REWARD_BLIP_PATH, or for the synthetic world its committed encoder.",
    )
    reward_epochs = forms.IntegerField(min_value=1, max_value=100, initial=_R.epochs)
    reward_learning_rate = forms.FloatField(initial=_R.learning_rate)
    reward_freeze_fraction = forms.FloatField(initial=_R.freeze_fraction)
    feedback_steps = forms.IntegerField(min_value=1, initial=_F.steps)
    feedback_learning_rate = forms.FloatField(initial=_F.learning_rate)
    sampling_steps = forms.IntegerField(min_value=2, initial=_F.sampling_steps)
    late_steps = forms.IntegerField(min_value=1, initial=_F.late_steps)
    guidance_scale = forms.FloatField(initial=_F.guidance_scale)
    reward_scale = forms.FloatField(initial=_F.reward_scale, help_text="λ, the weight of the reward loss.")
    pretrain_loss_weight = forms.FloatField(
        min_value=0,
        initial=_F.pretrain_loss_weight,
        help_text="Weight of the denoising loss on correct (world) or expert-preferred images; 0 turns it off.",
    )
    guard_every = forms.IntegerField(
        min_value=0,
        initial=_F.guard_every,
        help_text="Steps between hacking-guard evaluations on held-out prompts (0: no guard).",
    )
    lora = forms.BooleanField(required=False, initial=_F.lora, label="LoRA (off: full fine-tuning)")
    lora_rank = forms.IntegerField(min_value=1, initial=_F.lora_rank)
    samples_per_prompt = forms.IntegerField(min_value=1, max_value=2, initial=_P.samples_per_prompt)
    share_of_prompts = forms.FloatField(min_value=0, max_value=1, initial=_P.share_of_prompts)
    prompts_per_category = forms.IntegerField(min_value=1, initial=_P.prompts_per_category)

    def clean(self) -> dict:
        data = super().clean()
        if self.errors:
            return data
        try:
            data["config"] = RoundConfig(
                base_model=data["base_model"],
                seed=data["seed"],
                reward=RewardStageConfig(
                    backbone=data.get("reward_backbone") or _R.backbone,
                    epochs=data["reward_epochs"],
                    learning_rate=data["reward_learning_rate"],
                    freeze_fraction=data["reward_freeze_fraction"],
                ),
                feedback=FeedbackStageConfig(
                    steps=data["feedback_steps"],
                    learning_rate=data["feedback_learning_rate"],
                    sampling_steps=data["sampling_steps"],
                    late_steps=data["late_steps"],
                    guidance_scale=data["guidance_scale"],
                    reward_scale=data["reward_scale"],
                    pretrain_loss_weight=data["pretrain_loss_weight"],
                    guard_every=data["guard_every"],
                    lora=data["lora"],
                    lora_rank=data["lora_rank"],
                ),
                push_back=PushBackConfig(
                    samples_per_prompt=data["samples_per_prompt"],
                    share_of_prompts=data["share_of_prompts"],
                    prompts_per_category=data["prompts_per_category"],
                ),
            )
        except RoundConfigError as exc:
            raise forms.ValidationError(str(exc)) from exc
        return data
