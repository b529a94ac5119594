"""Model phases: features, holdout, training, evaluation, blessing, model card, registry."""
