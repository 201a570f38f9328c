"""`twi-curate` command line: run, inspect, report, sample-corpus, sandbox check|run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from schemas import sample as S

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
err = Console(stderr=True)

DEFAULT_N = 48


def cache_dir() -> Path:
    return Path(os.environ.get("TWI_CURATE_CACHE", Path.home() / ".cache" / "twi-curate"))


def _cell(v: Any) -> str:
    if isinstance(v, bytes | bytearray):
        return f"<{len(v)} bytes>"
    if isinstance(v, float):
        return f"{v:.3f}"
    s = "" if v is None else str(v)
    return s if len(s) <= 120 else s[:117] + "..."


def print_table(title: str, cols: list[str], rows: list[tuple[Any, ...]]) -> None:
    table = Table(title=title, title_justify="left")
    for c in cols:
        table.add_column(c)
    for r in rows:
        table.add_row(*[_cell(v) for v in r])
    console.print(table)


# Exit codes of `twi-curate run` (README "Scheduled runs"): 0 done (or nothing to add);
EXIT_CANNOT_START = 2  # bad config, input, format, benchmark or sandbox level; usage errors
EXIT_LOCKED = 3  # another run is writing into OUT
EXIT_WRITE_FAILED = 4  # writing the results failed (disk full, read-only, I/O); OUT unchanged
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGINT; OUT unchanged


def _fail(msg: str, code: int = EXIT_CANNOT_START) -> None:
    err.print(f"[bold red]error:[/] {msg}", soft_wrap=True)  # one line, whatever the width (logs, cron)
    raise typer.Exit(code=code)


@app.command()
def run(
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(help="JSONL/JSON/Parquet files, HF save_to_disk folders, or folders of them; none = bundled corpus"),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="output folder")] = Path("curated"),
    config: Annotated[Path | None, typer.Option("--config", help="YAML config (see README)")] = None,
    address: Annotated[str | None, typer.Option("--address", help="Ray address of a cluster; default local")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="curate only the first N records")] = None,
    input_format: Annotated[
        str | None,
        typer.Option("--format", help="force one input format (see README 'Input formats'); default: detect per file"),
    ] = None,
    benchmark: Annotated[
        Path | None,
        typer.Option("--benchmark", help='JSONL of {"name", "question"?, "image"?} to decontaminate against'),
    ] = None,
    judge_endpoint: Annotated[
        str | None, typer.Option("--judge-endpoint", help="OpenAI-compatible base URL for LLM/VLM judges")
    ] = None,
    judge_model: Annotated[str | None, typer.Option("--judge-model", help="model name at --judge-endpoint")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bars or worker logs")] = False,
    allow_weak_sandbox: Annotated[
        bool,
        typer.Option(
            "--allow-weak-sandbox", help="replay even if the sandbox is below replay.min_sandbox_level (unsafe)"
        ),
    ] = False,
    recompute: Annotated[
        str | None,
        typer.Option("--recompute", help="recompute the rows OUT holds already from this stage on: replay, judges or "
                     "routing (default: only when that stage's settings changed)"),
    ] = None,
    image_root: Annotated[
        list[Path] | None,
        typer.Option(
            "--image-root",
            help="folder where relative image paths and bare file names are looked up (repeatable; "
            "adds to ingest.image_roots)",
        ),
    ] = None,
) -> None:
    """Curate trajectories into routed Parquet shards (OUT/shards/route=*/discipline=*/)."""
    from pipeline.config import ConfigError, load_config, with_image_roots, with_llm_judge
    from pipeline.evaluate import agreement, find_labels
    from pipeline.run import run_pipeline
    from pipeline.sample_corpus import ensure_sample_corpus

    try:
        cfg = with_image_roots(with_llm_judge(load_config(config), judge_endpoint, judge_model), image_root or [])
    except ConfigError as exc:
        _fail(str(exc))
    if recompute is not None and recompute not in ("replay", "judges", "routing"):
        _fail(f"--recompute must be replay, judges or routing, not {escape(recompute)!r}")
    if not inputs:
        corpus_dir = cache_dir() / f"sample-corpus-n{DEFAULT_N}-s0"
        console.print(f"No INPUT given: using the bundled sample corpus ({corpus_dir})")
        inputs = [ensure_sample_corpus(corpus_dir, n=DEFAULT_N, seed=0)]
    from pipeline.dedup import BenchmarkError
    from pipeline.formats import UnknownFormatError
    from pipeline.publish import OutLockedError, WriteFailedError
    from pipeline.run import NothingToCurate
    from pipeline.sandbox.levels import SandboxLevelError

    try:
        manifest = run_pipeline(
            inputs,
            out,
            cfg,
            address=address,
            limit=limit,
            quiet=quiet,
            allow_weak_sandbox=allow_weak_sandbox,
            warn=lambda msg: err.print(f"[bold red]WARNING:[/] [red]{escape(msg)}[/]"),
            format=input_format,
            benchmark=benchmark,
            recompute=recompute,
        )
    except FileNotFoundError as exc:
        _fail(str(exc))
    except (UnknownFormatError, BenchmarkError) as exc:
        _fail(escape(str(exc)))
    except SandboxLevelError as exc:
        _fail(escape(str(exc)))
    except OutLockedError as exc:
        _fail(escape(str(exc)), EXIT_LOCKED)
    except WriteFailedError as exc:
        _fail(escape(str(exc)), EXIT_WRITE_FAILED)
    except NothingToCurate as exc:
        console.print(escape(str(exc)))
        return
    except KeyboardInterrupt:
        _fail(f"interrupted: nothing was published; {out} still shows its previous results. Rerun the same "
              "command to resume (the work already committed is kept).", EXIT_INTERRUPTED)
    _print_summary(manifest)
    labels = find_labels(inputs)
    if labels is not None and limit is None:
        ev = agreement(out, labels)
        (out / "evaluation.json").write_text(json.dumps(ev, indent=2))
        console.print(
            f"Agreement with {labels.name}: {ev['agree']}/{ev['labeled']} = {ev['agreement']:.1%} "
            f"(details in {out / 'evaluation.json'})"
        )
    console.print(f"Report {_write_report(out)}")
    if not manifest["conservation"]["ok"]:
        _fail("conservation check failed: see manifest.json 'conservation' (this is a bug, please report)")
    console.print(f"Shards in {out / 'shards'}; manifest {out / 'manifest.json'}")


def _print_summary(manifest: dict[str, Any]) -> None:
    table = Table(title=f"run {manifest['run_id']}: {manifest['input_records']} input records", title_justify="left")
    table.add_column("discipline")
    for r in S.ROUTES:
        table.add_column(r, justify="right")
    for d, counts in sorted(manifest["by_discipline"].items()):
        table.add_row(d, *[str(counts.get(r, 0)) for r in S.ROUTES])
    table.add_row("[bold]all", *[f"[bold]{manifest['routes'].get(r, 0)}" for r in S.ROUTES])
    console.print(table)
    ok = manifest["conservation"]["ok"]
    console.print(
        f"conservation: {'[green]ok' if ok else '[red]FAILED'}[/] "
        f"({sum(manifest['routes'].values())} routed = {manifest['input_records']} input records)"
    )
    _print_throughput(manifest)
    _print_replay_env(manifest)


def _print_throughput(manifest: dict[str, Any]) -> None:
    """samples/s of the whole run, then each stage's busy seconds (manifest timings.stages)."""
    timings = manifest.get("timings") or {}
    rate = manifest.get("samples_per_s")
    if rate is None:
        return
    stages = ", ".join(
        f"{name} {s.get('busy_s', 0):.1f} s busy" for name, s in sorted((timings.get("stages") or {}).items())
    )
    console.print(
        f"throughput: {rate:.2f} samples/s ({manifest['input_records']} records in {timings.get('total_s', 0):.1f} s"
        f"{'; ' + stages if stages else ''})"
    )


def _print_replay_env(manifest: dict[str, Any]) -> None:
    """Loud closing lines when the replay environment lacked what trajectories used (a module, a
    tool function, a referenced file): those samples were rejected with replay_env:<kind>:<name>,
    not lost, and each line says what to do."""
    from pipeline.manifest import replay_env_advice

    advice = replay_env_advice(manifest)
    if not advice:
        return
    n = (manifest.get("replay_env") or {}).get("samples", 0)
    console.print(
        f"[bold red]REPLAY ENVIRONMENT GAPS:[/] [red]{n} sample(s) could not be replayed faithfully because "
        "the replay environment lacks what they used; they were rejected with replay_env:<kind>:<name> "
        "(see manifest.json 'replay_env'):[/]"
    )
    for line in advice:
        console.print(f"  [bold yellow]![/] [yellow]{escape(line)}[/]")


@app.command()
def inspect(
    out: Annotated[Path, typer.Argument(help="output folder of a run")] = Path("curated"),
    sql: Annotated[str | None, typer.Option("--sql", help="any SQL over the view `samples`")] = None,
    view: Annotated[
        str | None, typer.Option("--view", help="canned view: stages (curriculum) | exports (written from this run)")
    ] = None,
) -> None:
    """Summaries of a run's shards with DuckDB, or any SQL over the view `samples`."""
    import duckdb

    from pipeline import inspect as views

    try:
        if sql:
            cols, rows = views.query(out, sql)
            print_table(sql, cols, rows)
            return
        if view == "stages":
            print_table("curriculum stages by discipline (default policy)", *views.stages_by_discipline(out))
            return
        if view == "exports":
            print_table("exports written from this run", *views.exports(out))
            return
        if view is not None:
            _fail("--view must be 'stages' or 'exports'")
        print_table("routes by discipline", *views.routes_by_discipline(out))
        print_table("mean score per dimension by route", *views.mean_scores_by_route(out))
        print_table("top rejection reasons", *views.top_reasons(out))
    except FileNotFoundError as exc:
        _fail(str(exc))
    except duckdb.Error as exc:
        _fail(f"query failed: {exc}\nThe view is `samples`; columns: {', '.join(S.SAMPLE_SCHEMA.names)}")


@app.command("sample-corpus")
def sample_corpus(
    out: Annotated[Path, typer.Option("--out", help="folder to write corpus.jsonl, images/, labels.jsonl")],
    n: Annotated[int, typer.Option("--n", min=1, help="number of records")] = DEFAULT_N,
    seed: Annotated[int, typer.Option("--seed", help="random seed")] = 0,
) -> None:
    """Write the bundled procedurally drawn six-discipline corpus (with evaluation labels)."""
    from pipeline.sample_corpus import build_sample_corpus

    summary = build_sample_corpus(out, n=n, seed=seed)
    console.print(f"wrote {out / 'corpus.jsonl'}: {json.dumps(summary)}")


# ------------------------------------------------------------------------------------------------
# twi-curate sandbox ...
# ------------------------------------------------------------------------------------------------
sandbox_app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Check the replay sandbox's isolation; replay a file in it."
)
app.add_typer(sandbox_app, name="sandbox")
CELL_MARKER = "# %%"


def split_cells(code: str) -> list[str]:
    """Cells of a script: split on lines that are exactly ``# %%`` (no marker: one cell).
    Empty cells (e.g. before the first marker) are dropped."""
    cells, current = [], []
    for line in code.splitlines(keepends=True):
        if line.rstrip("\r\n") == CELL_MARKER:
            cells.append("".join(current))
            current = []
        else:
            current.append(line)
    cells.append("".join(current))
    return [c for c in cells if c.strip()]


def _replay_config(config: Path | None):
    from pipeline.config import ConfigError, load_config

    try:
        return load_config(config).replay
    except ConfigError as exc:
        _fail(str(exc))


@sandbox_app.command("check")
def sandbox_check(
    config: Annotated[Path | None, typer.Option("--config", help="YAML config (replay.sandbox, replay.min_sandbox_level)")] = None,
) -> None:
    """Start a sandbox child, read back which isolation layers it applied, compare with the level.

    Exit code 0 only if replay.min_sandbox_level is met. TWI_SANDBOX_DISABLE=seccomp,cgroups
    (layer names) switches layers off to see what a weaker machine would get.
    """
    from pipeline.sandbox.levels import LAYER_LABELS, check_level, level_of_layer

    replay_cfg = _replay_config(config)
    try:
        ok, report = check_level(replay_cfg)
    except ValueError as exc:  # a bad TWI_SANDBOX_DISABLE
        _fail(str(exc))
    table = Table(title=f"replay sandbox ({report.kind}) isolation layers", title_justify="left")
    table.add_column("layer")
    table.add_column("status")
    table.add_column("needed from level")
    for layer, label in LAYER_LABELS.items():
        active = report.layers.get(layer, False)
        table.add_row(label, "[green]active[/]" if active else "[bold red]missing[/]", level_of_layer(layer))
    console.print(table)
    style = "green" if ok else "bold red"
    console.print(f"[{style}]{escape(report.summary())}: {'OK' if ok else 'NOT MET'}[/]")
    if not ok:
        err.print(escape(report.advice()))
        raise typer.Exit(code=1)


@sandbox_app.command("run")
def sandbox_run(
    code: Annotated[Path, typer.Argument(help="Python file; cells separated by lines that are exactly '# %%'")],
    image: Annotated[list[Path] | None, typer.Option("--image", help="input image (repeatable): image, images[k]")] = None,
    out: Annotated[Path, typer.Option("--out", help="folder for the images the cells produce")] = Path("sandbox-out"),
    config: Annotated[Path | None, typer.Option("--config", help="YAML config (replay section)")] = None,
    allow_weak_sandbox: Annotated[
        bool, typer.Option("--allow-weak-sandbox", help="run even below replay.min_sandbox_level (unsafe)")
    ] = False,
) -> None:
    """Replay CODE's cells in the sandbox (state carries over), print each cell's result, save images.

    Exit code 0 if every cell is ok, 1 otherwise.
    """
    from pipeline.sandbox import InputImage, SandboxError
    from pipeline.sandbox.levels import make_sandbox, sandbox_limits, sandbox_uid

    replay_cfg = _replay_config(config)
    try:
        cells = split_cells(code.read_text())
        images = [InputImage(p.name, p.read_bytes(), path=str(p)) for p in image or []]
    except OSError as exc:
        _fail(str(exc))
    if not cells:
        _fail(f"{code} has no code")
    try:
        box = make_sandbox(
            replay_cfg.sandbox,
            sandbox_limits(replay_cfg),
            uid=sandbox_uid(),
            min_level=replay_cfg.min_sandbox_level,
            allow_weaker=allow_weak_sandbox,
        )
    except (SandboxError, ValueError) as exc:
        _fail(escape(f"{exc}\nRun `twi-curate sandbox check` for details, or pass --allow-weak-sandbox."))
    try:
        outcomes = box.replay(cells, images)
    finally:
        box.close()
    out.mkdir(parents=True, exist_ok=True)
    for k, outcome in enumerate(outcomes):
        style = "green" if outcome.status == "ok" else "bold red"
        console.print(f"[bold]cell {k}[/] [{style}]{outcome.status}[/] ({outcome.duration_ms:.0f} ms)")
        if outcome.stdout:
            console.print(escape(outcome.stdout.rstrip("\n")), highlight=False)
        if outcome.error:
            console.print(f"[red]{escape(outcome.error.rstrip())}[/]", highlight=False)
        for name, data in outcome.images:
            path = out / name
            path.write_bytes(data)
            console.print(f"  image: {path}")
    if any(o.status != "ok" for o in outcomes):
        raise typer.Exit(code=1)


@app.command()
def export(
    out: Annotated[Path, typer.Argument(help="output folder of a run")],
    fmt: Annotated[str, typer.Option("--format", help="llamafactory | verl | swift | hf")],
    stage: Annotated[str, typer.Option("--stage", help="sft-science | sft-twi | rl-1 | rl-2")],
    dest: Annotated[Path, typer.Option("--out", help="folder to write the export to")],
    text_share: Annotated[float | None, typer.Option("--text-share", help="sft-twi: text samples per twi sample")] = None,
    balance: Annotated[
        str | None, typer.Option("--balance", help="target discipline mix, e.g. physics=0.5,biology=0.5")
    ] = None,
) -> None:
    """Export one curriculum stage of a run in a trainer's format."""
    from pydantic import ValidationError

    from pipeline.export import FORMATS
    from pipeline.export import export as do_export
    from routing.curriculum import STAGES, CurriculumPolicy

    if fmt not in FORMATS:
        _fail(f"--format must be one of {', '.join(FORMATS)}")
    if stage not in STAGES:
        _fail(f"--stage must be one of {', '.join(STAGES)}")
    update: dict[str, Any] = {}
    if text_share is not None:
        update["text_share"] = text_share
    if balance:
        try:
            update["balance"] = {k.strip(): float(v) for k, v in (p.split("=") for p in balance.split(","))}
        except ValueError:
            _fail("--balance takes discipline=share pairs, e.g. physics=0.5,biology=0.5")
    try:
        policy = CurriculumPolicy(**update)
    except ValidationError as exc:
        _fail(f"invalid curriculum option: {exc.errors()[0]['msg']}")
    try:
        summary = do_export(out, fmt, stage, dest, policy)
    except FileNotFoundError as exc:
        _fail(str(exc))
    console.print(f"exported {summary['samples']} samples of {stage} as {fmt} to {dest} ({summary['by_route']})")


def _write_report(out: Path) -> str:
    """`run` ends by writing OUT/report.html (pipeline.report); -> the line to print. The results are
    published already: a report that cannot be written (disk full) is a warning, not a failed run."""
    from pipeline.report import write_report

    try:
        return write_report(out).summary()
    except OSError as exc:
        return f"not written ({escape(str(exc))}); write it later with: twi-curate report {escape(str(out))}"


@app.command()
def report(
    out: Annotated[Path, typer.Argument(help="output folder of a run")],
    dest: Annotated[Path | None, typer.Option("--out", help="HTML file to write (default OUT/report.html)")] = None,
    samples: Annotated[
        str, typer.Option("--samples", help="gallery trajectories per route (twi, text, rejected), or 'all'")
    ] = "6",
) -> None:
    """One self-contained HTML report of a run: funnel, routes, reasons, score histograms, replay, judges,
    history and a gallery of trajectories (full-size images in <report>_files/ beside it)."""
    from pipeline.report import parse_samples, write_report

    try:
        n = parse_samples(samples)
    except ValueError:
        _fail("--samples takes a number >= 0 or 'all'")
    try:
        result = write_report(out, dest, n)
    except FileNotFoundError as exc:
        _fail(str(exc))
    console.print(f"Report {result.summary()}")


@app.command()
def explain(
    out: Annotated[Path, typer.Argument(help="output folder of a run")],
    sample_id: Annotated[str, typer.Argument(help="sample_id to explain")],
) -> None:
    """A sample's route, reasons, scores with explanations, and its trajectory with replayed cells."""
    from pipeline.shards import VIEW, connect, fetch_rows

    try:
        con = connect(out)
    except FileNotFoundError as exc:
        _fail(str(exc))
    rows = fetch_rows(con, f"SELECT * FROM {VIEW} WHERE {S.SAMPLE_ID} = ?", [sample_id])
    if not rows:
        _fail(f"no sample {sample_id!r} in {out}; list ids with: twi-curate inspect {out} --sql "
              f"\"SELECT sample_id, route FROM samples\"")
    r = rows[0]
    console.print(f"[bold]{r[S.SAMPLE_ID]}[/]  {r[S.DISCIPLINE]}  route [bold]{r[S.ROUTE]}[/]  "
                  f"reasons {escape(str(r[S.ROUTE_REASONS]))}  source {escape(str(r[S.SOURCE]))}")
    if r[S.INPUT_ERROR]:
        detail = f" ({r[S.INPUT_DETAIL]})" if r.get(S.INPUT_DETAIL) else ""
        console.print(f"input error: {r[S.INPUT_ERROR]}{detail}\nraw: {r[S.RAW]}")
        return
    scores = Table(title="scores", title_justify="left")
    for c in ("dimension", "score", "metric", "llm", "why"):
        scores.add_column(c)
    for d in S.DIMENSIONS:
        scores.add_row(d, *[_cell(r.get(c)) for c in (S.score_column(d), S.metric_score_column(d),
                                                       S.llm_score_column(d), S.explanation_column(d))])
    console.print(scores)
    console.print(f"[bold]Question[/] {r[S.QUESTION]}\n[bold]Ground truth[/] {r[S.GROUND_TRUTH]}")
    cells = {c[S.CELL_TURN]: c for c in r[S.REPLAY] or []}
    for i, t in enumerate(r[S.TURNS] or []):
        console.print(f"[bold cyan]Step {i + 1}[/] {t[S.TURN_REASONING]}")
        if t[S.TURN_CODE]:
            console.print(t[S.TURN_CODE], markup=False, highlight=False)
            c = cells.get(i)
            if c is not None:
                imgs = ", ".join(f"{im[S.IMG_NAME]} {im[S.IMG_WIDTH]}x{im[S.IMG_HEIGHT]}" for im in c[S.CELL_IMAGES] or [])
                fid = "n/a" if c[S.CELL_FIDELITY] is None else f"{c[S.CELL_FIDELITY]:.2f}"
                console.print(f"  [bold]replay[/] {c[S.CELL_STATUS]} in {c[S.CELL_DURATION_MS]:.0f} ms, "
                              f"fidelity {fid}, images: {escape(imgs) or 'none'}")
                console.print("  " + (c[S.CELL_STDOUT] or "").strip()[:1500], markup=False, highlight=False)
                if c[S.CELL_ERROR]:
                    console.print("  " + c[S.CELL_ERROR].strip()[:1500], markup=False, highlight=False)
            console.print(f"  [bold]recorded[/] {(t[S.TURN_OBS_TEXT] or '').strip()[:500]}")
    console.print(f"[bold]Final answer[/] {r[S.FINAL_ANSWER]}")
    if r[S.TEXT_RESPONSE]:
        console.print(f"[bold]Text-only version[/] (flags {escape(str(r[S.TEXT_FLAGS]))})")
        console.print(r[S.TEXT_RESPONSE], markup=False, highlight=False)


if __name__ == "__main__":
    app()
