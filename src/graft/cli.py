"""`graft`: one command per stage (each run as its Prefect flow), plus run, summary and predict.

Thin: parsing, printing and exit codes only; the work lives in graft.stages and the libraries.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from graft.core.layout import STAGES, Layout

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="Transfer learning for small image datasets.")


def _version(value: bool) -> None:
    if value:
        from graft.core import VERSION

        typer.echo(f"graft {VERSION}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v",
                                          help="Prefect's own logs and full tracebacks.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Options for every command; Prefect reads its log level when it is imported, so it is set
    here, before any command imports it (the user's environment wins)."""
    if verbose:
        os.environ["GRAFT_VERBOSE"] = "1"
    else:  # Prefect still logs to its server (the UI has every line); the console stays quiet
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")

Root = Annotated[Path, typer.Option(help="Project root (holds params.yaml, data/, models/).")]
ParamsFile = Annotated[Path | None, typer.Option("--params", help="Default: ROOT/params.yaml.")]
NoPrefect = Annotated[bool, typer.Option("--no-prefect", help="Run in-process, without Prefect.")]


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """The errors a user must act on (bad input, missing files: ValueError subclasses and
    FileNotFoundError, whose messages name the file) → 'error: …' on stderr and exit code 1."""
    try:
        yield
    except (ValueError, FileNotFoundError) as exc:
        if os.environ.get("GRAFT_VERBOSE"):
            raise
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    except OSError as exc:  # a full disk, a permission: one line naming the file, no traceback
        where = exc.filename or "(no file named by the system)"
        typer.secho(f"error: {where}: {exc.strerror or exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None


def _check_params_early(root: Path, params: Path | None) -> None:
    """Bad params fail here, in the time Python takes to start, before Prefect or torch load."""
    from graft.core.config import load_params
    from graft.stages import check_params

    path = params or Layout(root).params
    check_params(load_params(path), str(path))


def _run_stage(stage: str, root: Path, params: Path | None, no_prefect: bool) -> dict:
    from graft.prefect_server import shared_server

    started = time.perf_counter()
    with _user_errors():
        _check_params_early(root, params)
        if no_prefect:  # no Prefect import either (~3 s; every torchrun rank runs this)
            from graft.stages import run_stage

            metrics, where = run_stage(stage, root, params), "in-process"
        else:
            with shared_server() as url:
                from graft import flows  # imports prefect: after PREFECT_API_URL is settled

                metrics = flows.STAGE_FLOWS[stage](str(root), str(params) if params else None)
                where = f"Prefect flow run on {url or os.environ['PREFECT_API_URL']}"
    # one line per stage; the metrics are in their file (all of them with -v)
    typer.echo(f"{stage}: done in {time.perf_counter() - started:.1f} s ({where}); "
               f"{Layout(root).metrics(stage)}", err=True)
    return metrics


def _stage_command(stage: str) -> None:
    def command(root: Root = Path("."), params: ParamsFile = None, no_prefect: NoPrefect = False):
        metrics = _run_stage(stage, root, params, no_prefect)
        if stage == "evaluate":
            _print_evaluation(metrics)
        elif stage == "audit":
            from graft.labels.report import console_lines

            _print_lines(console_lines(metrics))
        elif os.environ.get("GRAFT_VERBOSE"):
            typer.echo(json.dumps(metrics, indent=2, default=str))

    command.__doc__ = f"Run the {stage} stage (reads params.yaml: {stage})."
    app.command(name=stage)(command)


for _stage in STAGES:
    _stage_command(_stage)


@app.command()
def run(root: Root = Path("."), params: ParamsFile = None) -> None:
    """Run all seven stages in order as one Prefect flow (`dvc repro` runs them one by one)."""
    with _user_errors():
        _check_params_early(root, params)
        from graft import flows

        flows.pipeline(str(root), str(params) if params else None)
    if params is None:  # dvc.yaml's stages read params.yaml
        _record_in_dvc(root)
    summary(root)


def _record_in_dvc(root: Path) -> None:
    """After `graft run`, what `dvc repro` would have recorded: dvc.lock gets this run's params,
    dependency and output hashes (`dvc commit`), so `dvc status` does not list every stage."""
    import shutil
    import subprocess

    beside = Path(sys.executable).parent / "dvc"  # graft's own venv, even when not on PATH
    dvc = str(beside) if beside.exists() else shutil.which("dvc")
    if not (root / ".dvc").is_dir() or dvc is None:
        return
    done = subprocess.run([dvc, "commit", "--force", "--quiet"], cwd=root, capture_output=True,
                          text=True)
    if done.returncode:
        typer.secho(f"warning: `dvc commit` failed, dvc.lock is not up to date: "
                    f"{done.stderr.strip().splitlines()[-1:]}", err=True, fg=typer.colors.YELLOW)


@app.command()
def summary(root: Root = Path(".")) -> None:
    """Print what the last run produced: accuracy vs baselines, transfer gain, model files."""
    from graft.evaluation.summary import summary_lines

    with _user_errors():
        lines = summary_lines(Layout(root))
    for line in lines:
        typer.echo(line)


@app.command()
def predict(
    paths: Annotated[list[Path], typer.Argument(metavar="IMAGES", help="Image files or folders.")],
    model: Annotated[Path | None, typer.Option(
        help="A Graft .onnx model; default: the champion's (models/champion/).")] = None,
    root: Root = Path("."),
    top_k: Annotated[int, typer.Option(help="Labels per image.")] = 3,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    batch_size: Annotated[int, typer.Option(help="Images per onnxruntime call.")] = 32,
) -> None:
    """Classify images with the champion (or --model); needs nothing but the .onnx file."""
    from graft.deploy.predict import main

    with _user_errors():
        if model is None and len(paths) > 1 and paths[0].suffix == ".onnx":
            model, paths = paths[0], paths[1:]  # the older form: graft predict MODEL PATH...
        if model is None:
            from graft.lifecycle.ship import champion_onnx

            model = champion_onnx(Layout(root).models)
        code = main(model, paths, top_k, fmt, batch_size)
    raise typer.Exit(code)


def _print_evaluation(metrics: dict) -> None:
    from graft.evaluation.report import summary_lines

    _print_lines(summary_lines(metrics))


def _print_lines(lines: list[str]) -> None:
    for line in lines:
        typer.echo(line, err=line.startswith("WARNING"))


@app.command()
def suggest(
    root: Root = Path("."),
    params: ParamsFile = None,
    n: Annotated[int | None, typer.Option("--n", help="Images to suggest; default suggest.n.")]
    = None,
) -> None:
    """The unlabelled images (ingest.unlabeled_path) to label next, best first, with the reason
    for each: writes reports/suggest.csv and prints the top of it."""
    from graft.core.config import load_params
    from graft.embeddings.store import check_params as check_features
    from graft.labels.report import suggestion_lines
    from graft.labels.suggest import suggest_for_project

    layout = Layout(root)
    path = params or layout.params
    with _user_errors():
        if n is not None and n < 1:
            raise ValueError(f"--n: must be at least 1, got {n}")
        loaded = load_params(path)
        check_features(loaded.features, str(path))
        method, table = suggest_for_project(loaded, layout, n)
    for line in suggestion_lines(method, table, str(layout.suggestions)):
        typer.echo(line)


@app.command()
def retrain(
    root: Root = Path("."),
    source: Annotated[str | None, typer.Option(help="New ingest.path for this run.")] = None,
) -> None:
    """Retrain on new data; promote the challenger only if it passes the gate (Prefect flow)."""
    from graft.retrain_flow import retrain as retrain_flow

    with _user_errors():
        result = retrain_flow(str(root), source)
    typer.echo(f"retrain: {result['status']}")
    for reason in result.get("reasons", []):
        typer.echo(f"  {reason}")


@app.command()
def models(root: Root = Path(".")) -> None:
    """List the champion and the model history: version, date, accuracy, model hash."""
    from graft.lifecycle.registry import versions

    rows = versions(Layout(root).models)
    if not rows:
        typer.echo(f"{Layout(root).models}: no champion yet; run `graft promote` (after "
                   "`dvc repro`) or `graft retrain`")
    for r in rows:
        typer.echo(f"{'*' if r['status'] == 'champion' else ' '} {r['version']}  "
                   f"{r['created']}  accuracy {100 * r['accuracy']:.1f}%  "
                   f"sha256 {r['model_sha256'][:12]}")


@app.command()
def rollback(
    version: Annotated[str | None, typer.Argument(help="Default: the newest in history.")] = None,
    root: Root = Path("."),
) -> None:
    """Make an earlier model the champion again (the current one moves to history)."""
    from graft.lifecycle.registry import rollback as do_rollback

    with _user_errors():
        restored = do_rollback(Layout(root).models, version)
    typer.echo(f"champion is now {restored}")


@app.command()
def promote(root: Root = Path(".")) -> None:
    """Gate the exported model against the champion and promote it if it passes (the first
    champion of a project comes this way, after `dvc repro`)."""
    from graft.lifecycle.retrain import promote_workspace

    with _user_errors():
        result = promote_workspace(Layout(root))
    for reason in result["reasons"]:
        typer.echo(f"  {reason}")
    if not result["promote"]:
        typer.secho(f"error: {Layout(root).model}: not promoted; the champion "
                    f"{result['champion_version']} stays (the gate's reasons above)",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo(f"champion is now {result['promoted_version']}")


@app.command()
def bundle(
    root: Root = Path("."),
    out: Annotated[Path | None, typer.Option(help="Bundle folder; default ROOT/bundle.")] = None,
) -> None:
    """Pack the champion's models, labels.json and a standalone predict.py into a folder + .zip
    (only a new folder, or one an earlier bundle made)."""
    from graft.lifecycle.ship import bundle_champion

    with _user_errors():
        result = bundle_champion(Layout(root), out)
    typer.echo(json.dumps(result, indent=2))


@app.command()
def bench(
    root: Root = Path("."),
    train: Annotated[bool, typer.Option("--train", help="Training images/s instead.")] = False,
    batch_size: Annotated[int, typer.Option(help="Throughput batch.")] = 32,
    seconds: Annotated[float, typer.Option(help="Timed seconds per measurement.")] = 10.0,
    size: Annotated[int, typer.Option(help="--train: image side in pixels.")] = 224,
    out: Annotated[Path | None, typer.Option(help="Default ROOT/metrics/bench*.json")] = None,
) -> None:
    """Inference latency/throughput of model.pt / model.onnx / model.int8.onnx (and GPU runtimes
    when present), or with --train the fine-tuning speed; prints a table, writes JSON."""
    from graft.core.files import write_json
    from graft.deploy.bench_report import markdown, markdown_train

    with _user_errors():
        if train:
            from graft.deploy.bench_train import bench_train

            report = bench_train(size=size, batch_size=batch_size, seconds=seconds)
            text = markdown_train(report)
        else:
            from graft.deploy.bench import bench_inference

            report = bench_inference(Layout(root), batch_size=batch_size, seconds=seconds)
            text = markdown(report)
    out = out or Layout(root).bench(train)
    write_json(out, report)
    typer.echo(f"{text}\n\nwritten to {out}")



@app.command()
def rank(
    root: Root = Path("."),
    params: ParamsFile = None,
    backbone: Annotated[list[str] | None, typer.Option(
        help="efficientnet_lite0/1/2 or timm:<name> (weights in features.weights_dir); "
             "default: features.auto_backbones.")] = None,
) -> None:
    """Rank backbones by LogME and H-score on the training features (computes missing ones);
    prints the table, writes metrics/rank.json."""
    from graft.core.config import load_params
    from graft.evaluation.report import rank_table
    from graft.evaluation.transferability import rank_backbones

    layout = Layout(root)
    with _user_errors():
        result = rank_backbones(load_params(params or layout.params), layout, backbone)
    typer.echo(f"{rank_table(result)}\n\nbest: {result['best']}; written to {layout.rank}")


@app.command()
def fewshot(
    params: Annotated[Path, typer.Option("--params", help="The benchmark's params file.")] = Path(
        "params.yaml"),
) -> None:
    """The few-shot benchmark (graft.evaluation.fewshot): writes results.csv, results.md,
    plots/accuracy_vs_shots.csv and metrics.json beside the params file."""
    from graft.evaluation.fewshot import load_fewshot_params
    from graft.evaluation.fewshot import run as run_fewshot

    with _user_errors():
        metrics = run_fewshot(load_fewshot_params(params), params.resolve().parent)
    typer.echo((params.resolve().parent / "results.md").read_text())
    typer.echo(f"{metrics['runs']} runs in {metrics['wall_seconds']} s")


@app.command()
def labelbench(
    params: Annotated[Path, typer.Option("--params", help="The benchmark's params file.")] = Path(
        "params.yaml"),
) -> None:
    """The labeling benchmark (graft.labels.benchmark): suggested vs random labels, planted
    wrong labels and near-copies; writes results.csv, results.md and metrics.json beside the
    params file."""
    from graft.labels.benchmark import load_labelbench_params
    from graft.labels.benchmark import run as run_labelbench

    with _user_errors():
        metrics = run_labelbench(load_labelbench_params(params), params.resolve().parent)
    typer.echo((params.resolve().parent / "results.md").read_text())
    typer.echo(f"{metrics['seeds']} seed(s) in {metrics['wall_seconds']} s")


if __name__ == "__main__":  # python -m graft.cli
    sys.exit(app())
