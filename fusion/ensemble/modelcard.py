"""The README.md model card written into every saved ensemble, rendered from its ``EnsembleConfig``."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, did_you_mean
from ..evaluation.metrics import ACCURACY, LOG_LOSS
from .persistence import DISTRIBUTION

if TYPE_CHECKING:
    from huggingface_hub import ModelCardData

    from ..evaluation import Report
    from .persistence import EnsembleConfig

_HEADING = re.compile(r"^(#{1,6})(?= )")


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


def _demoted(markdown: str, levels: int) -> str:
    """Markdown with every ATX heading moved ``levels`` deeper (capped at 6), code blocks left alone: the report
    keeps its own hierarchy inside the card's."""
    lines, fenced = [], False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := _HEADING.match(line)):
            line = "#" * min(6, len(match[1]) + levels) + line[len(match[1]):]
        lines.append(line)
    return "\n".join(lines)


def _evaluation(config: EnsembleConfig, report: Report | None) -> list[str]:
    if report is not None:
        return ["## Evaluation", "", "The full report, with plots, is in `report/report.html`.", "",
                _demoted(report.to_markdown(), 2), ""]
    metrics = config.metrics
    if not metrics:
        return []
    return ["## Evaluation", "", f"On the {metrics['split']} split ({metrics['rows']} rows).", "",
            metrics_table(metrics["scores"]), ""]


def base_models(config: EnsembleConfig) -> list[str]:
    """Hub ids of the members' models (local folders and package models are not hub references)."""
    from ..members.hf_source import reference_kind

    models = [m.config.get("model") for m in config.members]
    return list(dict.fromkeys(m for m in models if isinstance(m, str) and reference_kind(m) == "hub"))


CARD_FIELDS = ("license", "datasets", "language", "model_name", "dataset_name", "tags", "base_model", "license_name",
               "license_link", "thumbnail")


def check_card_data(card_data: Mapping[str, Any] | None) -> None:
    """Refuse (ConfigError) ``card_data`` keys the card does not take, before anything is written."""
    unknown = sorted(set(card_data or {}) - set(CARD_FIELDS))
    if unknown:
        raise ConfigError(f"save_pretrained(card_data=...) got unknown key(s) {unknown}; valid: "
                          f"{', '.join(CARD_FIELDS)}." + did_you_mean(unknown[0], CARD_FIELDS))


def card_metadata(config: EnsembleConfig, card_data: Mapping[str, Any] | None = None) -> ModelCardData:
    """The card's YAML metadata (``huggingface_hub.ModelCardData``): library, task, base models, and the kept
    fuser's validation scores as ``model-index`` results. ``card_data`` adds or overrides fields (``license``,
    ``datasets``, ``language``, ``model_name``, ``dataset_name``)."""
    from huggingface_hub import EvalResult, ModelCardData

    extra = dict(card_data or {})
    dataset_name = extra.pop("dataset_name", None)
    datasets = extra.get("datasets") or []
    name = extra.pop("model_name", None) or title(config)
    results = []
    metrics = config.metrics or {}
    kept = next((k for k in metrics.get("scores", {}) if k.startswith("fuser")), None)
    if kept is not None:
        for metric in ("accuracy", "log_loss"):
            results.append(EvalResult(
                task_type="text-classification", task_name="Text classification",
                dataset_type=datasets[0] if datasets else "custom",
                dataset_name=dataset_name or (datasets[0] if datasets else "the data it was built on"),
                dataset_split=metrics.get("split"), metric_type=metric, metric_name=metric.replace("_", "-"),
                metric_value=float(metrics["scores"][kept][metric])))
    return ModelCardData(**{"library_name": "fusion", "pipeline_tag": "text-classification",
                            "tags": ["fusion", "ensemble", "text-classification"],
                            "base_model": base_models(config) or None, "model_name": name,
                            "eval_results": results or None, **extra})


def title(config: EnsembleConfig) -> str:
    """The card's title, naming the ensemble and its task, e.g. ``fusion ensemble (stacking of 3 members): text
    classification into negative / positive``."""
    labels = " / ".join(config.labels[:6]) + (f" / ... ({len(config.labels)} labels)" if len(config.labels) > 6 else "")
    count = f"{len(config.members)} member{'s' if len(config.members) != 1 else ''}"
    return f"fusion ensemble ({config.fuser.kind_name} of {count}): text classification into {labels}"


def render_model_card(config: EnsembleConfig, report: Report | None = None,
                      card_data: Mapping[str, Any] | None = None) -> str:
    """Markdown model card (``huggingface_hub.ModelCard``): metadata, members, fuser, how they were fitted,
    validation metrics, usage, versions."""
    from huggingface_hub import ModelCard

    members = [f"| {m.name} | {m.fitted.get('description', m.kind_name)} | "
               f"{config.member_fitting.get(m.name, '')} |" for m in config.members]
    chosen = f" Chosen among candidates: {config.selection['chosen']}." if config.selection else ""
    data = card_metadata(config, card_data)
    body = "\n".join([
        f"# {data.model_name}", "",
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
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))
