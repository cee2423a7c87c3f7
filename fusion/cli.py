"""The ``fusion`` command: build an ensemble from a YAML recipe, then evaluate, predict, report and inspect it; merge
fine-tunes of one checkpoint into one model.

    fusion build recipes/sst2_minilm.yaml [--data DIR|FILE|hub:ID] [--output DIR] [--limit N] [--set KEY=VALUE]
                 [--bundle-models] [--engine local|ray]
    fusion evaluate DIR --data PATH [--split validation] [--out REPORT_DIR] [--engine local|ray]
    fusion predict DIR --text "a great film" [--text ...]   |   --file input.csv [--text-column text] --out predictions.csv
                   [--overwrite]
    fusion report DIR [--out DIR]
    fusion inspect DIR
    fusion cache info|clear [--older-than 30d] [--cache-dir DIR]
    fusion merge MODEL MODEL ... --output DIR [--method ties] [--base BASE] [--weight 0.6 0.4] [--set density=0.5]
                 [--head N|MODEL] [--dtype bfloat16] [--overwrite]
    fusion merge merge.yaml [--output DIR] [--set merge.method.params.density=0.5] [--overwrite]

Exit codes: 0 success, 2 a usage, recipe or data error (``error: ...`` on stderr, no traceback), 1 anything
unexpected (a bug: the traceback is printed). ``--quiet`` silences progress bars and step messages,
``--verbose`` shows the library's INFO logs; both are accepted before or after the subcommand.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .datafiles import DataSpec, load_data, load_split, read_table
from .errors import ChecksumError, ConfigError, DataError, FusionError, LabelMismatchError, PersistenceError
from .inputs import check_texts
from .io import atomic_file, atomic_write_text
from .progress import progress_disabled

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .evaluation import Report

EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE = 0, 1, 2


class Console:
    """Results go to stdout; step messages to stderr unless ``--quiet``."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def step(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)


def _silence_progress_bars() -> None:
    """Downloads' bars (transformers' are silenced around each model load by fusion's switch, then restored)."""
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()


def _load_data(spec: DataSpec, quiet: bool):
    if spec.hub is not None and quiet:
        import datasets

        datasets.disable_progress_bars()
    return load_data(spec)


def _print_scores(rows: list[tuple[str, dict[str, float], float | None]], best: str | None = None) -> None:
    """A table of accuracy and log-loss (and fit seconds when any row has them); ``best`` is starred."""
    timed = any(seconds is not None for _, _, seconds in rows)
    width = max([30, *(len(name) + 2 for name, _, _ in rows)])  # long names keep the columns aligned
    print(f"\n{'model':<{width}}{'accuracy':>10}{'log-loss':>10}" + (f"{'fit s':>8}" if timed else ""))
    print("-" * (width + (28 if timed else 20)))
    for name, score, seconds in rows:
        timing = (f"{seconds:>8.1f}" if seconds is not None else f"{'':>8}") if timed else ""
        mark = " *" if name == best else ""
        print(f"{name:<{width}}{score['accuracy']:>10.4f}{score['log_loss']:>10.4f}{timing}{mark}")


def _members_first(scores: dict[str, dict[str, float]], members: list[str]) -> list[tuple[str, dict, None]]:
    order = {name: i for i, name in enumerate(members)}
    return [(n, scores[n], None) for n in sorted(scores, key=lambda n: (order.get(n, len(order)), n))]


def _saved_ensemble_holding(path: Path) -> Path | None:
    """The saved ensemble folder that ``path`` is (or lies inside), if any."""
    from .ensemble.persistence import CONFIG_NAME

    path = path.resolve()
    return next((d for d in (path, *path.parents) if (d / CONFIG_NAME).is_file()), None)


def _save_report(report: Report, directory: Path, formats: Sequence[str] | None) -> list[Path]:
    """Write the report's files and say where (never into a saved ensemble, whose files are checksummed)."""
    if formats is not None and not formats:
        return []
    inside = _saved_ensemble_holding(directory)
    if inside is not None:
        raise ConfigError(f"--out {directory} lies inside the saved ensemble {inside}, whose files are checksummed: "
                          "writing there would make from_pretrained refuse it. Give an --out outside it, e.g. "
                          f"{inside.parent / 'evaluation'}.")
    written = sorted(report.save(directory, **({"formats": list(formats)} if formats is not None else {})).values())
    print(f"report: {', '.join(str(p) for p in written)}")
    return written


def _check_writable_dir(directory: Path, option: str) -> None:
    """Make ``directory`` (and its parents) and check a file can be created in it: before any work starts, so a
    bad output place fails at once, not after training."""
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{option} {directory} is a file, not a folder; give a folder for the outputs (a new one, "
                          "or an existing one).")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise ConfigError(f"{option} {directory} cannot be written ({err.strerror or err}); choose a folder you can "
                          "write to.") from None


def _check_output_file(path: Path, option: str) -> None:
    """Refuse, before any work, an output file path that is a folder or whose folder cannot be written."""
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; give a file path, e.g. {path / 'predictions.csv'}.")
    _check_writable_dir(path.parent, f"{option} {path}: the folder")


# --- build ----------------------------------------------------------------------------------------------------


def _fused_name(label: str) -> str:
    """A fuser candidate's row name: ``fuser: <label>``, or ``<label>`` for the member-alone candidate, whose
    label (``member: NAME``) already says what it is."""
    return label if label.startswith("member: ") else f"fuser: {label}"


def _report_scores(report: Report) -> dict[str, dict[str, float]]:
    """``{name: metrics}`` of every model in a report; fusers as ``fuser: <name>``."""
    return {(_fused_name(m.name) if m.kind == "fuser" else m.name): m.metrics for m in report.models}


def _print_build_table(ensemble: Any, report: Report) -> None:
    scores = _report_scores(report)
    chosen = _fused_name(ensemble._fuser_label())
    _print_scores(_members_first(scores, [m.name for m in ensemble.members_]), chosen)
    source = ("out-of-fold member outputs on the training rows" if ensemble.fuser_data_ == "train"
              else "the validation rows, and are scored here out-of-fold (cross-fitted over them)")
    print(f"(validation split; fusers learnt from {source})")
    selection = ensemble.selection_
    if selection:
        cv = ", ".join(f"{k} {v['log_loss']:.4f} / {v['accuracy']:.4f}" for k, v in selection["scores"].items())
        print(f"kept {selection['chosen']}: lowest {selection['cv']}-fold cross-validated log-loss on the "
              f"{selection['rows']} rows among the best member and the fusers more accurate there than it beyond "
              f"noise (95% paired interval above 0; log-loss / accuracy: {cv})")


NAME_THE_LABELS = ("name the labels in id order with a `labels:` list under `data:` in the recipe (e.g. `labels: "
                   "[negative, positive]`), or a labels.json beside train.csv in the data folder "
                   "(`{\"0\": \"negative\", \"1\": \"positive\"}`)")


def _unnamed_ids(labels: Sequence[Any] | None) -> bool:
    """True when the labels are integer ids (the data gave no names for them)."""
    return bool(labels) and all(isinstance(v, int) and not isinstance(v, bool) for v in labels)


def _fit_with_cli_advice(ensemble: Any, splits: Any, console: Console) -> None:
    """Fit; when the labels are bare ids, say how a command-line user names them (the library's own messages
    speak of ``Ensemble(labels=...)``, which a recipe user cannot call)."""
    unnamed = splits.labels is None and _unnamed_ids(splits.train.get("label"))
    if unnamed:
        console.step(f"the labels are ids without names, so the ids are used as names; to {NAME_THE_LABELS}")
    try:
        ensemble.fit(splits.train, splits.validation)
    except (DataError, LabelMismatchError) as err:
        if not unnamed:
            raise
        raise type(err)(f"{err} From the command line: {NAME_THE_LABELS}.") from err


def run_build(args: argparse.Namespace, console: Console) -> int:
    from .engines.local import finish_launch, is_main_process
    from .ensemble.persistence import check_replaceable
    from .recipe import load_recipe, parse_override

    overrides = [parse_override(text) for text in args.set or []]
    recipe = load_recipe(args.recipe, overrides, data=args.data, output=args.output, limit=args.limit,
                         engine=args.engine)
    show_progress = not args.quiet
    members = recipe.build_members(show_progress)
    print(f"recipe {args.recipe}: {len(members)} members ({', '.join(m.name for m in members)}), fusers "
          f"{', '.join(recipe.fuser_labels)}; data {recipe.data.describe()}; output {recipe.output}")
    if args.check:
        print("recipe is valid (nothing was run).")
        return EXIT_OK
    _check_writable_dir(recipe.output, "output")  # before anything is trained
    _check_output_file(recipe.output / "recipe.yaml", "output")
    if (recipe.output / "report").exists() and not (recipe.output / "report").is_dir():
        raise ConfigError(f"output {recipe.output}: {recipe.output / 'report'} is a file; the report is written in a "
                          "folder of that name. Move the file, or choose another output.")
    check_replaceable(recipe.output / "ensemble")
    console.step("finding member model files")
    recipe.check_sources(members)
    console.step(f"loading data from {recipe.data.describe()}")
    splits = _load_data(recipe.data, args.quiet)
    carved = f", validation carved from train (fraction {recipe.data.validation_fraction})" if splits.carved else ""
    print(f"data: {len(splits.train['text'])} train, {len(splits.validation['text'])} validation rows{carved}")
    ensemble = recipe.build_ensemble(members, labels=splits.labels, fusers=recipe.build_fusers(show_progress))
    console.step(f"fitting members and {len(ensemble.fusers)} fuser(s)")
    _fit_with_cli_advice(ensemble, splits, console)
    if not is_main_process():  # under accelerate launch / torchrun, the main process reports and saves
        finish_launch()
        return EXIT_OK
    console.step("evaluating every fuser on the validation split")  # saved with the ensemble, in its model card
    _print_build_table(ensemble, ensemble.report_)
    saved = ensemble.save_pretrained(recipe.output / "ensemble", bundle_models=args.bundle_models)
    atomic_write_text(recipe.output / "recipe.yaml", recipe.resolved_yaml())
    print(f"saved the ensemble to {saved} (recipe as run: {recipe.output / 'recipe.yaml'})")
    _save_report(ensemble.report_, recipe.output / "report", recipe.report.formats)
    finish_launch()
    return EXIT_OK


# --- evaluate / predict / report ------------------------------------------------------------------------------


def _load_ensemble(directory: str, quiet: bool, cache_dir: str | None = None, engine: str | None = None):
    from .ensemble.ensemble import Ensemble

    return Ensemble.from_pretrained(directory, show_progress=not quiet, cache_dir=cache_dir, engine=engine)


def _cli_data_spec(value: str, **options: Any) -> DataSpec:
    if value.startswith("hub:"):
        return DataSpec(hub=value[len("hub:"):], **options)
    if not Path(value).exists():
        raise DataError(f"--data: {value!r} does not exist; give a dataset directory (train.csv, validation.csv, "
                        "labels.json), a .csv/.tsv/.jsonl/.json file, or hub:DATASET_ID.")
    return DataSpec(path=value, **options)


def run_evaluate(args: argparse.Namespace, console: Console) -> int:
    ensemble = _load_ensemble(args.dir, args.quiet, args.cache_dir, args.engine)
    options = {"text_column": args.text_column, "label_column": args.label_column, "limit": args.limit}
    if args.data.startswith("hub:"):
        options.update(config=args.data_config, validation_split=args.split)
    spec = _cli_data_spec(args.data, **options)
    console.step(f"loading the {args.split} split of {spec.describe()}")
    table, _ = load_split(spec, args.split)
    data = {ensemble.text_column: table["text"], ensemble.label_column: table.get("label")}
    if data[ensemble.label_column] is None:
        raise DataError(f"{spec.describe()} ({args.split}): no column {args.label_column!r}; evaluation needs labels.")
    report = ensemble.evaluate(data, split=args.split)
    print(f"{args.split} split of {spec.describe()}: {len(table['text'])} rows")
    _print_scores(_members_first(_report_scores(report), [m.name for m in ensemble.members_]))
    _save_report(report, Path(args.out) if args.out else Path(args.dir).parent / f"evaluation-{args.split}", None)
    return EXIT_OK


def _write_predictions(path: Path, texts: list[str], labels: Sequence[str], predicted, proba) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label", *[f"proba_{name}" for name in labels]])
        for text, label, row in zip(texts, predicted, proba, strict=True):
            writer.writerow([text, label, *[f"{p:.6f}" for p in row]])


def run_predict(args: argparse.Namespace, console: Console) -> int:
    if args.file is not None:
        table = read_table(args.file)
        if args.text_column not in table:
            raise DataError(f"{args.file}: no column {args.text_column!r}; it has columns {list(table)}. "
                            "Choose one with --text-column.")
        texts = check_texts(table[args.text_column], str(args.file), args.text_column, first_row=1)  # as in Python
        if not texts:
            raise DataError(f"{args.file}: no rows to predict.")
        _check_output_file(Path(args.out), "--out")
        if Path(args.out).exists() and not args.overwrite:
            raise ConfigError(f"--out {args.out} already exists; give --overwrite to replace it, or another --out.")
    else:
        texts = check_texts(args.text, "--text", first_row=1)  # an invalid UTF-8 byte in argv: a lone surrogate
    ensemble = _load_ensemble(args.dir, args.quiet)
    proba = ensemble.predict_proba(texts)
    predicted = ensemble.classes_[proba.argmax(1)]
    if args.file is None:
        for text, label, row in zip(texts, predicted, proba, strict=True):
            print(f"{label}\t{row.max():.4f}\t{text}")
        return EXIT_OK
    out = Path(args.out)
    _write_predictions(out, texts, list(ensemble.classes_), predicted, proba)
    print(f"wrote {len(texts)} predictions to {out}")
    return EXIT_OK


def _report_json(directory: Path) -> Path:
    for candidate in (directory / "report.json", directory / "report" / "report.json"):
        if candidate.is_file():
            return candidate
    raise PersistenceError(f"no report.json in {directory} or {directory / 'report'}; write one with "
                           "`fusion evaluate DIR --data ...` or `fusion build`.")


def run_report(args: argparse.Namespace, console: Console) -> int:
    from .evaluation import Report

    source = _report_json(Path(args.dir))
    report = Report.load(source)
    default = source.parent
    ensemble = _saved_ensemble_holding(default)
    if ensemble is not None:  # the copy saved with an ensemble stays as it is; render beside the ensemble
        default = ensemble.parent / "report"
    _save_report(report, Path(args.out) if args.out else default, None)
    return EXIT_OK


# --- inspect --------------------------------------------------------------------------------------------------


def _file_status(path: Path, expected: str) -> str:
    from .io import sha256_file

    if not path.is_file():
        return "missing"
    return "verified" if sha256_file(path) == expected else "MISMATCH"


def _member_weight_file(model: str, revision: str | None, filename: str) -> Path | None:
    from .members.hf_source import HFSource

    source = HFSource(model, revision)
    if source.is_package:  # resolving it would import the package's code; inspect loads and imports nothing
        return None
    if source.is_local:
        try:
            return source.local_dir / filename
        except FusionError:
            return None
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(model, filename, revision=revision)
    except Exception:  # not a valid repo id, or no cache: nothing to verify locally
        return None
    return Path(hit) if isinstance(hit, str) else None


def _print_member(index: int, member: Any) -> list[str]:
    from .members.hf_source import PACKAGE_PREFIX

    problems = []
    config, fitted = member.config, member.fitted
    print(f"  [{index}] {member.name}  kind={member.kind_name}")
    details = {"what": fitted.get("description"), "labels": fitted.get("labels"),
               **{k: config.get(k) for k in ("model", "revision", "pooling", "label_map") if config.get(k) is not None}}
    if isinstance(config.get("head"), dict):
        details["head"] = config["head"].get("kind")
    if fitted.get("finetuned"):
        details["backbone"] = f"fine-tuned, saved in {member.dir}/backbone"
    for key, value in details.items():
        if value is not None:
            print(f"      {key}: {value}")
    if config.get("trust_remote_code"):
        print("      trust_remote_code: true (ignored unless the loading call passes trust_remote_code=True)")
    source = fitted.get("source") or {}
    for filename, sha in (source.get("weights_sha256") or {}).items():
        if not isinstance(filename, str) or Path(filename).is_absolute() or ".." in Path(filename).parts:
            raise PersistenceError(f"member {member.name!r}: weights file name {filename!r} is not a plain name "
                                   "inside the model's folder; refused.")
        path = _member_weight_file(str(config.get("model")), source.get("resolved_revision") or config.get("revision"),
                                   filename)
        if str(config.get("model")).startswith(PACKAGE_PREFIX):
            status = "not checked (package model: inspect imports no code)"
        else:
            status = "not found locally" if path is None else _file_status(path, sha)
        if status in ("MISMATCH", "missing"):
            problems.append(f"member {member.name!r} weights {filename}")
        print(f"      weights {filename} sha256 {sha[:16]}…  {status}")
    return problems


def _print_files(directory: Path, files: dict[str, str], unlisted: list[str]) -> list[str]:
    from .ensemble.persistence import CONFIG_NAME
    from .io import path_inside

    for relative in files:  # EnsembleConfig.read checked these already; never hash a file outside the folder
        path_inside(directory, relative, f"{CONFIG_NAME}: files entry")
    problems = []
    print(f"files ({len(files)} checksummed):")
    for relative, sha in sorted(files.items()):
        status = _file_status(directory / relative, sha)
        if status != "verified":
            problems.append(relative)
        print(f"  {status:<9} {relative}  sha256 {sha[:16]}…")
    extra = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    extra = [p for p in extra if p not in files and p not in ("fusion_config.json", "README.md")]
    for relative in extra:
        if relative in unlisted:
            print(f"  {'UNLISTED':<9} {relative}  (loading reads it, but no checksum was recorded: refused)")
        else:
            print(f"  {'untracked':<9} {relative}")
    return problems


def run_inspect(args: argparse.Namespace, console: Console) -> int:
    from .ensemble.modelcard import fuser_call, fuser_data_note
    from .ensemble.persistence import EnsembleConfig

    directory = Path(args.dir)
    config = EnsembleConfig.read(directory)
    print(f"ensemble: {directory}")
    print(f"format: {config.format} v{config.format_version}; saved with "
          + ", ".join(f"{k} {config.versions[k]}" for k in ("fusion", "torch", "transformers") if k in config.versions))
    print(f"labels ({len(config.labels)}): {', '.join(config.labels)}")
    print(f"members ({len(config.members)}):")
    problems = [p for i, m in enumerate(config.members) for p in _print_member(i, m)]
    print(f"fuser: {fuser_call(config)}; fitted on {fuser_data_note(config)} (fuser_data={config.fuser_data}, "
          f"cv={config.cv}, seed={config.seed})")
    if config.selection:
        print(f"chosen among: {', '.join(config.selection['scores'])} (by {config.selection['cv']}-fold "
              f"cross-validated {config.selection['metric']})")
    metrics = config.metrics
    if metrics:
        print(f"metrics on the {metrics.get('split')} split ({metrics.get('rows')} rows):", end="")
        _print_scores(_members_first(metrics["scores"], [m.name for m in config.members]))
    unlisted = config.unlisted(directory)
    problems += _print_files(directory, config.files, unlisted)
    if problems or unlisted:
        raise ChecksumError(f"{len(problems) + len(unlisted)} file(s) differ from the sha256 recorded at save time, "
                            f"are missing, or are not recorded though loading reads them: "
                            f"{', '.join(dict.fromkeys(problems + unlisted))}. Restore them, or save the ensemble again.")
    print("all checksums verified.")
    return EXIT_OK


# --- the parser -------------------------------------------------------------------------------------------------


def _common(default: Any = argparse.SUPPRESS) -> argparse.ArgumentParser:
    """``--quiet`` / ``--verbose``, accepted before and after the subcommand: the subcommand's copies default to
    SUPPRESS, so they leave the top-level value alone unless given (argparse lets a subparser's default win)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=default, help="no progress bars or step messages")
    common.add_argument("-v", "--verbose", action="store_true", default=default, help="show the library's INFO logs")
    return common


def _data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text-column", default="text", help="column holding the texts (default: text)")
    parser.add_argument("--label-column", default="label", help="column holding the labels (default: label)")
    parser.add_argument("--limit", type=int, default=None, help="use at most N rows (seeded sample)")


def _engine_option(parser: argparse.ArgumentParser) -> None:
    from .engines import ENGINES

    parser.add_argument("--engine", choices=ENGINES.names(), default=None,
                        help="what computes member outputs on large datasets, shard by shard: local (this process, "
                             "the default) or ray (Ray Data batch inference on a Ray cluster, $RAY_ADDRESS or a new "
                             "local one; pip install \"fusion-ensembles[ray]\")")


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(prog="fusion", description="Build, evaluate and ship ensembles of text classifiers.",
                                     epilog="Run `fusion COMMAND --help` for each command's options.",
                                     parents=[_common(default=False)])
    parser.add_argument("--version", action="version", version=f"fusion {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    build = sub.add_parser("build", parents=[common], help="train and save an ensemble from a YAML recipe",
                           description="Load data, build the members, fit the ensemble once per listed fuser (members "
                                       "run once), keep the best fuser on validation accuracy (ties: first listed), "
                                       "save OUTPUT/ensemble, OUTPUT/recipe.yaml and the report in OUTPUT/report.")
    build.add_argument("recipe", help="the YAML recipe (its keys: the README's 'Recipes' section, "
                                            "and the docstring of fusion/recipe/__init__.py)")
    build.add_argument("--data", help="replace the recipe's data source: a directory, a file, or hub:DATASET_ID")
    build.add_argument("--output", help="replace the recipe's output directory")
    build.add_argument("--limit", type=int, help="use at most N rows per split (quick runs)")
    build.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a recipe value, e.g. --set members.0.model=DIR --set ensemble.cv=3 (repeatable)")
    build.add_argument("--bundle-models", action="store_true",
                       help="copy members' model folders of this machine into the saved ensemble, so that it loads "
                            "anywhere (hub ids and package: models are referenced, not copied)")
    build.add_argument("--check", action="store_true", help="validate the recipe and exit without running anything")
    _engine_option(build)
    build.set_defaults(run=run_build)

    evaluate = sub.add_parser("evaluate", parents=[common], help="score a saved ensemble on labelled data",
                              description="Print accuracy and log-loss of every member and the fuser; write the report.")
    evaluate.add_argument("dir", help="a directory written by save_pretrained (e.g. OUTPUT/ensemble)")
    evaluate.add_argument("--data", required=True, help="a dataset directory, a file, or hub:DATASET_ID")
    evaluate.add_argument("--split", default="validation", help="which split of a directory or hub dataset")
    evaluate.add_argument("--data-config", help="the hub dataset's configuration")
    evaluate.add_argument("--out", help="report directory (default: evaluation-SPLIT beside DIR)")
    evaluate.add_argument("--cache-dir", help="keep member outputs here")
    _engine_option(evaluate)
    _data_options(evaluate)
    evaluate.set_defaults(run=run_evaluate)

    predict = sub.add_parser("predict", parents=[common], help="predict labels for texts or a file",
                             description="Print label and probability per --text, or write --out with the columns text, "
                                         "label and one proba_<label> column per label for --file.")
    predict.add_argument("dir", help="a directory written by save_pretrained")
    given = predict.add_mutually_exclusive_group(required=True)
    given.add_argument("--text", action="append", help="a text to classify (repeatable)")
    given.add_argument("--file", help="a .csv, .tsv, .jsonl, .json or .txt (one text per line) file")
    predict.add_argument("--text-column", default="text", help="column holding the texts in --file (default: text)")
    predict.add_argument("--out", default="predictions.csv", help="CSV to write for --file (default: predictions.csv); "
                                                                  "an existing file is refused unless --overwrite")
    predict.add_argument("--overwrite", "--force", action="store_true", help="replace an existing --out file")
    predict.set_defaults(run=run_predict)

    report = sub.add_parser("report", parents=[common], help="re-render a report from its report.json",
                            description="Read DIR/report.json or DIR/report/report.json and write the HTML, Markdown "
                                        "and JSON report again.")
    report.add_argument("dir", help="an ensemble directory, a build output directory, or a report directory")
    report.add_argument("--out", help="where to write (default: beside report.json; for the report saved inside "
                                      "an ensemble, report/ beside the ensemble)")
    report.set_defaults(run=run_report)

    inspect_ = sub.add_parser("inspect", parents=[common], help="show a saved ensemble and verify its checksums",
                              description="Members, labels, fuser, metrics, and the sha256 of every file, without "
                                          "loading any weights. Exits with 2 when a file is missing or differs.")
    inspect_.add_argument("dir", help="a directory written by save_pretrained")
    inspect_.set_defaults(run=run_inspect)
    from .cli_cache import add_parser as add_cache_parser  # fusion cache info|clear
    add_cache_parser(sub, common)
    from .cli_merge import add_parser as add_merge_parser  # fusion merge MODEL MODEL ... | recipe.yaml
    add_merge_parser(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fusion`` command; returns the exit code (0 ok, 2 usage/recipe/data errors, 1 unexpected)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version and usage errors
        return stop.code if isinstance(stop.code, int) else EXIT_USAGE
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    console = Console(args.quiet)
    try:
        if args.quiet:
            _silence_progress_bars()
        with progress_disabled() if args.quiet else contextlib.nullcontext():  # fusion's bars, and transformers'
            return args.run(args, console)                                   # while fusion loads models
    except FusionError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`fusion inspect DIR | head`): stop quietly, like other tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by it
    except Exception:
        traceback.print_exc()
        print("error: unexpected failure (a bug in fusion, or in a member); the traceback is above.", file=sys.stderr)
        return EXIT_UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())
