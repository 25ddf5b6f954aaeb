"""The Hugging Face Hub side of a run: the student's model card (`model_card`, its text pieces in `card_text`), written
beside the saved student and pushed with it by `DistillationTrainer.push_to_hub`; and which commit of a Hub repository
a model was loaded from (`commits`)."""
