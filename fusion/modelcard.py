"""The README.md model card written into every saved ensemble."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .evaluation.metrics import ACCURACY, LOG_LOSS

if TYPE_CHECKING:
    from .ensemble import Ensemble


def metrics_table(scores: dict[str, dict[str, float]]) -> str:
    """Markdown table of accuracy and log-loss per member and fuser."""
    rows = [f"| model | {ACCURACY.header} | {LOG_LOSS.header} |", "|---|---|---|"]
    rows += [f"| {name} | {s['accuracy']:.4f} | {s['log_loss']:.4f} |" for name, s in scores.items()]
    return "\n".join(rows)


def _fuser_data_note(config: dict[str, Any]) -> str:
    if config.get("fuser_data_used") == "train":
        return f"out-of-fold member outputs on the training rows ({config['cv']}-fold cross-fitting)"
    return "member outputs on the validation split"


def render_model_card(ensemble: Ensemble, config: dict[str, Any]) -> str:
    """Markdown model card: members, fuser, validation metrics, usage, versions."""
    lines = [
        "---", "library_name: fusion", "tags:", "- fusion", "- ensemble", "- text-classification", "---", "",
        "# Ensemble", "",
        f"A fusion ensemble of {len(ensemble.members)} members for labels {', '.join(f'`{x}`' for x in ensemble.labels)}.",
        "", "## Members", "", "| name | what |", "|---|---|",
        *[f"| {m.name} | {m.describe()} |" for m in ensemble.members], "",
        "## Fuser", "", f"`{ensemble.fuser!r}`, fitted on {_fuser_data_note(config)}.", "",
    ]
    metrics = config.get("metrics")
    if ensemble.report_ is not None:
        report = ensemble.report_.to_markdown().replace("\n# ", "\n### ").replace("\n## ", "\n### ")
        report = report[2:] if report.startswith("# ") else report
        lines += ["## Evaluation", "", "The full report, with plots, is in `report/report.html`.", "", "### " + report, ""]
    elif metrics:
        caveat = (" The fuser was fitted on these same rows, so its score is in-sample (optimistic)."
                  if metrics.get("fuser_in_sample") else " No part of the ensemble was trained on these rows.")
        lines += ["## Evaluation", "", f"On the {metrics['split']} split ({metrics['rows']} rows).{caveat}", "",
                  metrics_table(metrics["scores"]), ""]
    lines += [
        "## Usage", "", "```python", "from fusion import Ensemble", "",
        'ensemble = Ensemble.from_pretrained("path/to/this/folder")',
        'ensemble.predict(["an example text"])', "```", "",
        "## Versions", "", *[f"- {k} {v}" for k, v in config["versions"].items()], "",
    ]
    return "\n".join(lines)
