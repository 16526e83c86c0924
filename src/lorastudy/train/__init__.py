"""Models and training: the mini bases (`base`), loading and merging (`modeling`), Trainer's set-up and the
cooldown branches (`training`), one planned run end to end (`finetune`), multi-GPU launch through accelerate
(`launch`) and LoRA's seeded dropout (`dropout`)."""
