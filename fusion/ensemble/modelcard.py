"""The README.md model card written into every saved ensemble, rendered from its ``EnsembleConfig``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ..evaluation.metrics import ACCURACY, LOG_LOSS
from .persistence import DISTRIBUTION

if TYPE_CHECKING:
    from ..evaluation import Report
    from .persistence import EnsembleConfig


def metrics_table(scores: dict[str, dict[str, float]]) -> str:
    """Markdown table of accuracy and log-loss per member and fuser."""
    rows = [f"| model | {ACCURACY.header} | {LOG_LOSS.header} |", "|---|---|---|"]
    rows += [f"| {name} | {s['accuracy']:.4f} | {s['log_loss']:.4f} |" for name, s in scores.items()]
    return "\n".join(rows)


def fuser_data_note(config: EnsembleConfig) -> str:
    """How the fuser was fitted, in words."""
    if config.fuser_data_used == "train":
        return f"out-of-fold member outputs on the training rows ({config.cv}-fold cross-fitting)"
    return f"member outputs on the validation split (its reported scores are {config.cv}-fold out-of-fold)"


def fuser_call(config: EnsembleConfig) -> str:
    """``linear(constraint="simplex", ...)``: the kept fuser with its settings."""
    params = ", ".join(f"{k}={json.dumps(v)}" for k, v in config.fuser.config.items())
    return f"{config.fuser.kind_name}({params})"


def _evaluation(config: EnsembleConfig, report: Report | None) -> list[str]:
    if report is not None:
        text = report.to_markdown().replace("\n# ", "\n### ").replace("\n## ", "\n### ")
        text = text[2:] if text.startswith("# ") else text
        return ["## Evaluation", "", "The full report, with plots, is in `report/report.html`.", "", "### " + text, ""]
    metrics = config.metrics
    if not metrics:
        return []
    return ["## Evaluation", "", f"On the {metrics['split']} split ({metrics['rows']} rows).", "",
            metrics_table(metrics["scores"]), ""]


def render_model_card(config: EnsembleConfig, report: Report | None = None) -> str:
    """Markdown model card: members, fuser, how they were fitted, validation metrics, usage, versions."""
    members = [f"| {m.name} | {m.fitted.get('description', m.kind_name)} | "
               f"{config.member_fitting.get(m.name, '')} |" for m in config.members]
    chosen = f" Chosen among candidates: {config.selection['chosen']}." if config.selection else ""
    return "\n".join([
        "---", "library_name: fusion", "tags:", "- fusion", "- ensemble", "- text-classification", "---", "",
        "# Ensemble", "",
        f"A fusion ensemble of {len(config.members)} members for labels {', '.join(f'`{x}`' for x in config.labels)}.",
        "", "## Members", "", "| name | what | fitted |", "|---|---|---|", *members, "",
        "## Fuser", "", f"`{fuser_call(config)}`, fitted on {fuser_data_note(config)}.{chosen}", "",
        *_evaluation(config, report),
        "## Usage", "", f"Install fusion with `pip install {DISTRIBUTION}` (it imports as `fusion`), then:", "",
        "```python", "from fusion import Ensemble", "",
        'ensemble = Ensemble.from_pretrained("path/to/this/folder")',
        'ensemble.predict(["an example text"])', "```", "",
        "## Versions", "", *[f"- {k} {v}" for k, v in config.versions.items()], "",
    ])
