"""The README.md model card of a merged model folder, rendered from its provenance (``fusion_merge.json``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def hub_ids(provenance: Mapping[str, Any]) -> list[str]:
    """Hub ids of the merged models and the base (local folders and package models are not hub references).

    Example:
        >>> hub_ids({"models": [{"model": "a", "hub_id": "org/a"}, {"model": "b"}], "base": None})
        ['org/a']
    """
    entries = [*provenance.get("models", []), *([provenance["base"]] if provenance.get("base") else [])]
    return list(dict.fromkeys(e["hub_id"] for e in entries if e.get("hub_id")))


def _source_row(role: str, entry: Mapping[str, Any]) -> str:
    where = f"`{entry['hub_id']}` @ `{entry.get('revision') or 'main'}`" if entry.get("hub_id") else \
        f"`{entry['model']}`"
    files = ", ".join(f"{name} `{sha[:12]}`" for name, sha in sorted(entry.get("weights_sha256", {}).items()))
    return f"| {role} | {where} | {files} |"


def render_merge_card(provenance: Mapping[str, Any]) -> str:
    """Markdown model card (``huggingface_hub.ModelCard``): metadata (library, task, base models, tags), the
    sources, the method and its parameters, heads and vocabulary, and how to load the folder.

    Example:
        >>> card = render_merge_card({"method": {"kind": "linear"}, "models": [{"model": "a"}], "labels": None})
        >>> "tags:" in card and "- merge" in card
        True
    """
    from huggingface_hub import ModelCard, ModelCardData

    method = dict(provenance["method"])
    kind = method.pop("kind")
    labels = provenance.get("labels")
    bases = hub_ids(provenance)
    data = ModelCardData(library_name="transformers", pipeline_tag="text-classification" if labels else None,
                         base_model=bases or None, base_model_relation="merge" if bases else None,
                         tags=["merge", "fusion", kind])
    models = provenance.get("models", [])
    rows = [_source_row(f"model {i}", e) for i, e in enumerate(models)]
    if provenance.get("base"):
        rows.append(_source_row("base", provenance["base"]))
    params = ", ".join(f"{k}={json.dumps(v)}" for k, v in method.items())
    loader = "AutoModelForSequenceClassification" if labels else "AutoModel"
    body = [
        f"# A `{kind}` merge of {len(models)} model{'s' if len(models) != 1 else ''}", "",
        f"Made with fusion's weight-space merge: `{kind}({params})`, applied tensor by tensor.", "",
        "## Sources", "", "| role | model | weight files (sha256) |", "|---|---|---|", *rows, "",
        "## What was done", "",
        f"- Labels: {', '.join(f'`{x}`' for x in labels) if labels else 'none (no classification head)'}.",
        f"- Heads: {provenance.get('heads', '')}.",
        f"- Vocabulary: {provenance.get('vocabulary', {}).get('note', '')}.",
        f"- Output dtype: {provenance.get('dtype')}.", "",
        "`fusion_merge.json` records all of it, with each source's checksums.", "",
        "## Usage", "", "```python", f"from transformers import {loader}, AutoTokenizer", "",
        f'model = {loader}.from_pretrained("path/to/this/folder")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")', "```", "",
        "## Versions", "", *[f"- {k} {v}" for k, v in provenance.get("versions", {}).items()], "",
    ]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)))
