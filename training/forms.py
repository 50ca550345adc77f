from __future__ import annotations

from django import forms

from gallery.models import Category, Generator, GeneratorKind
from training.ml.algorithm1.config import (
    SYNTHETIC_BASE,
    DPOStageConfig,
    FeedbackStageConfig,
    PushBackConfig,
    RaftStageConfig,
    RewardStageConfig,
    RoundConfig,
    RoundConfigError,
)

_R, _F, _P, _D = RewardStageConfig(), FeedbackStageConfig(), PushBackConfig(), DPOStageConfig()
_RA = RaftStageConfig()


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
    objective = forms.ChoiceField(
        choices=[("refl", "ReFL"), ("dpo", "Diffusion-DPO"), ("raft", "Reward-ranked fine-tuning")],
        required=False,
        initial="refl",
        widget=forms.RadioSelect,
        help_text=(
            "How each iteration fine-tunes the model. ReFL climbs the reward models (guarded by the gate "
            "and the hacking guard). Diffusion-DPO learns straight from the experts' image pairs against "
            "the frozen current model, with no reward model in the loop (reward models are still trained: "
            "they place the new samples in the rankings). Reward-ranked fine-tuning draws several samples "
            "of the current model per prompt, keeps the one the reward models rank first and trains on it "
            "with the denoising loss (gate and hacking guard as for ReFL). Steps, learning rate, batch "
            "(pairs for DPO) and LoRA apply to all three."
        ),
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
    reward_head = forms.ChoiceField(
        choices=[
            ("mlp", "MLP score head (IterComp / ImageReward)"),
            ("itm", "MLP + the pretrained BLIP's matching head"),
        ],
        initial=_R.head,
        required=False,
        help_text=(
            "Pretrained backbone only. With the matching head the reward starts as the BLIP's image–text "
            "matching margin and the experts' pairs fine-tune it, instead of teaching a fresh head from zero."
        ),
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
    feedback_warmup_steps = forms.IntegerField(
        required=False,
        min_value=0,
        initial=_F.warmup_steps,
        label="Warm-up steps",
        help_text="The fine-tuning learning rate rises linearly over these first steps (0: from the start).",
    )
    feedback_ema_decay = forms.FloatField(
        required=False,
        min_value=0.5,
        max_value=0.9999,
        label="EMA decay",
        help_text=(
            "ReFL and reward-ranked fine-tuning: keep an exponential moving average of the fine-tuned "
            "weights (e.g. 0.99); the hacking guard judges it and the round deploys it. Empty: no average."
        ),
    )
    dpo_beta = forms.FloatField(
        required=False,
        initial=_D.beta,
        label="DPO β",
        help_text="Diffusion-DPO only: strength of the pull towards the reference (5000 in the paper's SDXL runs).",
    )
    dpo_pair_source = forms.ChoiceField(
        choices=[
            ("both", "both"),
            ("own", "own: the experts' rankings of the current model's samples (push-back)"),
            ("gallery", "gallery: the other expert pairs"),
        ],
        required=False,
        initial=_D.pair_source,
        label="DPO pairs",
        help_text="Diffusion-DPO only: which expert-ranked pairs train (a reward model's placements never do).",
    )
    dpo_ties = forms.ChoiceField(
        choices=[("skip", "skip"), ("down_weight", "keep at half weight")],
        required=False,
        initial=_D.ties,
        label="DPO ties",
        help_text="Diffusion-DPO only: image pairs the experts left tied.",
    )
    dpo_pair_weights = forms.BooleanField(
        required=False,
        initial=_D.pair_weights,
        label="DPO: weight each pair by the share of experts who agree with it",
    )
    raft_candidates = forms.IntegerField(
        required=False,
        min_value=2,
        max_value=64,
        initial=_RA.candidates,
        label="Candidates per prompt",
        help_text="Reward-ranked fine-tuning only: samples drawn per prompt; the reward models keep the best.",
    )
    raft_caption_dropout = forms.FloatField(
        required=False,
        min_value=0,
        max_value=0.99,
        initial=_RA.caption_dropout,
        label="Caption dropout",
        help_text=(
            "Reward-ranked fine-tuning only: share of captions left empty in the denoising loss, so the "
            "unconditional branch that guidance subtracts learns from the kept samples too."
        ),
    )
    raft_guidance_scale = forms.FloatField(
        required=False,
        min_value=1,
        label="Candidates' guidance",
        help_text=(
            "Reward-ranked fine-tuning only: guidance scale the candidates are drawn at; empty: the guidance "
            "scale above. At 1 the kept samples are the conditional model's own, which sampling then guides."
        ),
    )
    raft_noise_floor = forms.FloatField(
        required=False,
        min_value=0,
        max_value=0.99,
        initial=_RA.noise_floor,
        label="Noise floor",
        help_text=(
            "Reward-ranked fine-tuning only: the denoising loss trains noise levels from this share of the "
            "schedule upwards; 0 trains every level, a higher floor only the noisy ones, where layout is decided."
        ),
    )
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
                # Left out of a post (scripts, older pages): ReFL, as every round before the choice.
                objective=data["objective"] or "refl",
                reward=RewardStageConfig(
                    backbone=data.get("reward_backbone") or _R.backbone,
                    head=data.get("reward_head") or _R.head,
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
                    ema_decay=data.get("feedback_ema_decay"),
                    warmup_steps=data.get("feedback_warmup_steps") or 0,
                ),
                push_back=PushBackConfig(
                    samples_per_prompt=data["samples_per_prompt"],
                    share_of_prompts=data["share_of_prompts"],
                    prompts_per_category=data["prompts_per_category"],
                ),
                dpo=self._dpo(data),
                raft=self._raft(data),
            )
        except RoundConfigError as exc:
            raise forms.ValidationError(str(exc)) from exc
        return data

    @staticmethod
    def _raft(data: dict) -> RaftStageConfig:
        # As for DPO's settings: another objective never reads it, so it is not stored.
        if data["objective"] != "raft":
            return RaftStageConfig()
        candidates, dropout = data["raft_candidates"], data["raft_caption_dropout"]
        return RaftStageConfig(
            candidates=_RA.candidates if candidates is None else candidates,
            caption_dropout=_RA.caption_dropout if dropout is None else dropout,
            guidance_scale=data.get("raft_guidance_scale"),
            noise_floor=data.get("raft_noise_floor") or _RA.noise_floor,
        )

    @staticmethod
    def _dpo(data: dict) -> DPOStageConfig:
        # A ReFL round never reads these; keeping what the admin typed (the page hides the fields, the
        # browser still posts them) would store settings that were not applied, and a stray β would
        # refuse a ReFL round.
        if data["objective"] != "dpo":
            return DPOStageConfig()
        return DPOStageConfig(
            beta=_D.beta if data["dpo_beta"] is None else data["dpo_beta"],
            pair_source=data["dpo_pair_source"] or _D.pair_source,
            ties=data["dpo_ties"] or _D.ties,
            pair_weights=data["dpo_pair_weights"],
        )
