"""Task conventions: the no-skill model's output per task (the cold-start floor's baseline)."""

from __future__ import annotations

import numpy as np
import pytest

from crispflow.errors import CrispflowError
from crispflow.model.evaluation import metric
from crispflow.model.tasks import no_skill_output


def test_no_skill_output_per_task() -> None:
    binary = no_skill_output("binary", np.array([True, False, False, False]), 3)
    assert binary.tolist() == [0.25, 0.25, 0.25]
    regression = no_skill_output("regression", np.array([1.0, 2.0, 6.0]), 2)
    assert regression.dtype == np.float64 and regression.tolist() == [3.0, 3.0]
    multiclass = no_skill_output("multiclass", np.array([0, 0, 1, 2, 2, 2]), 4, n_classes=4)
    assert multiclass.shape == (4, 4)
    assert multiclass[0].tolist() == pytest.approx([2 / 6, 1 / 6, 3 / 6, 0.0])
    assert no_skill_output("multiclass", np.array([0, 1, 1]), 2).shape == (2, 2)  # k inferred from the codes


def test_the_no_skill_log_loss_is_the_entropy_of_the_class_frequencies() -> None:
    rng = np.random.default_rng(0)
    priors = np.array([0.5, 0.3, 0.2])
    y_train, y = rng.choice(3, size=20_000, p=priors), rng.choice(3, size=5_000, p=priors)
    baseline = no_skill_output("multiclass", y_train, y.size, 3)
    entropy = -(priors * np.log(priors)).sum()
    assert metric("log_loss", "multiclass", y, baseline) == pytest.approx(entropy, abs=0.02)
    assert metric("r2", "regression", y.astype(float), no_skill_output("regression", y_train, y.size)) <= 0


def test_no_skill_output_rejects_bad_input() -> None:
    with pytest.raises(CrispflowError, match="y_train is empty"):
        no_skill_output("binary", np.array([]), 3)
    with pytest.raises(CrispflowError, match=r"class codes must be in 0..2"):
        no_skill_output("multiclass", np.array([0, 3]), 3, n_classes=3)
    with pytest.raises(CrispflowError, match="non-finite"):
        no_skill_output("regression", np.array([1.0, np.nan]), 3)
    with pytest.raises(CrispflowError, match="task 'ranking' is not"):
        no_skill_output("ranking", np.array([1.0]), 3)
