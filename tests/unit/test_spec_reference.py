"""The README's spec reference is generated from the pydantic models and cannot drift from them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from crispflow import spec as spec_module
from crispflow.spec_reference import END, START, main, render, replace_block

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def test_readme_block_equals_the_generated_reference() -> None:
    text = README.read_text()
    assert text.count(START) == 1 and text.count(END) == 1
    block = text[text.index(START) + len(START):text.index(END)]
    assert block == "\n" + render(), "stale: run python -m crispflow.spec_reference --write README.md"


def _models() -> list[type]:
    from pydantic import BaseModel

    return [m for m in vars(spec_module).values()
            if isinstance(m, type) and issubclass(m, BaseModel) and m.__module__ == spec_module.__name__
            and not m.__name__.startswith("_")]


def test_every_field_has_a_description_and_a_row() -> None:
    reference = render()
    for model in _models():
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            assert f"| `{name}` |" in reference, f"{model.__name__}.{name} is missing from the reference"


def test_reference_shows_types_defaults_and_bounds() -> None:
    reference = render()
    assert "| `interval_coverage` | float | `0.9` | > 0, < 1 |" in reference
    assert "| `cv_folds` | int | `5` | ≥ 2, ≤ 20 |" in reference
    assert "| `task` | binary \\| multiclass \\| regression \\| null | `null` |" in reference
    assert "#### `training.candidates[]`" in reference and "#### `sources[] (kind: http)`" in reference
    assert "| regression | `rmse`, `mae`, `r2` | `rmse`, `mae` |" in reference
    assert "| `ridge` | — | — | `Ridge` |" in reference


def test_check_fails_on_a_stale_block_and_write_fixes_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    doc = tmp_path / "README.md"
    doc.write_text(f"# title\n\n{START}\nold table\n{END}\n\nafter\n")
    assert main(["--check", str(doc)]) == 1
    assert "stale" in capsys.readouterr().err
    assert main(["--write", str(doc)]) == 0
    assert main(["--check", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# title\n\n") and text.endswith(f"{END}\n\nafter\n") and "old table" not in text
    doc.write_text("no markers\n")
    assert main(["--check", str(doc)]) == 2
    with pytest.raises(ValueError, match="no <!-- spec-reference:start -->"):
        replace_block("no markers", "x")


def test_the_module_runs_as_a_script_on_the_readme() -> None:
    out = subprocess.run([sys.executable, "-m", "crispflow.spec_reference", "--check", "README.md"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr


def test_the_readmes_example_specs_parse() -> None:
    import re

    import yaml

    from crispflow.spec import parse_spec

    blocks = re.findall(r"```yaml\n(name: .*?)```", README.read_text(), flags=re.S)
    specs = {b.split("\n", 1)[0]: parse_spec(yaml.safe_load(b), "README.md") for b in blocks}
    assert specs["name: lending_club_rate"].task == "regression"
    assert specs["name: claims"].task == "binary"
