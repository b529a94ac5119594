"""The prediction store: every prediction and feedback label the model server logs; the canary, drift, alerts
and batch scoring read it through here.

schema.py: the columns (PREDICTION_COLUMNS, FEEDBACK_COLUMNS, FEATURE_PREFIX) and PredictionLogError;
store.py: the root and the layout under it (open_store, root_of, model_dir, drift_dir, canary_report_path,
display_path, storage_options_from_env); writer.py: PredictionLog; reader.py: read_predictions, read_feedback.
"""
