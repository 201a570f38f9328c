"""`twi-curate` command line: run, inspect, sample-corpus."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
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


def _fail(msg: str) -> None:
    err.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(code=2)


@app.command()
def run(
    inputs: Annotated[list[Path] | None, typer.Argument(help="JSONL files or folders; none = bundled corpus")] = None,
    out: Annotated[Path, typer.Option("--out", help="output folder")] = Path("curated"),
    config: Annotated[Path | None, typer.Option("--config", help="YAML config (see README)")] = None,
    address: Annotated[str | None, typer.Option("--address", help="Ray address of a cluster; default local")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="curate only the first N records")] = None,
    judge_endpoint: Annotated[
        str | None, typer.Option("--judge-endpoint", help="OpenAI-compatible base URL for LLM/VLM judges")
    ] = None,
    judge_model: Annotated[str | None, typer.Option("--judge-model", help="model name at --judge-endpoint")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bars or worker logs")] = False,
) -> None:
    """Curate trajectories into routed Parquet shards (OUT/shards/route=*/discipline=*/)."""
    from pipeline.config import ConfigError, load_config, with_llm_judge
    from pipeline.evaluate import agreement, find_labels
    from pipeline.run import run_pipeline
    from pipeline.sample_corpus import ensure_sample_corpus

    try:
        cfg = with_llm_judge(load_config(config), judge_endpoint, judge_model)
    except ConfigError as exc:
        _fail(str(exc))
    if not inputs:
        corpus_dir = cache_dir() / f"sample-corpus-n{DEFAULT_N}-s0"
        console.print(f"No INPUT given: using the bundled sample corpus ({corpus_dir})")
        inputs = [ensure_sample_corpus(corpus_dir, n=DEFAULT_N, seed=0)]
    try:
        manifest = run_pipeline(inputs, out, cfg, address=address, limit=limit, quiet=quiet)
    except FileNotFoundError as exc:
        _fail(str(exc))
    _print_summary(manifest)
    labels = find_labels(inputs)
    if labels is not None and limit is None:
        ev = agreement(out, labels)
        (out / "evaluation.json").write_text(json.dumps(ev, indent=2))
        console.print(
            f"Agreement with {labels.name}: {ev['agree']}/{ev['labeled']} = {ev['agreement']:.1%} "
            f"(details in {out / 'evaluation.json'})"
        )
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


@app.command()
def inspect(
    out: Annotated[Path, typer.Argument(help="output folder of a run")] = Path("curated"),
    sql: Annotated[str | None, typer.Option("--sql", help="any SQL over the view `samples`")] = None,
) -> None:
    """Summaries of a run's shards with DuckDB, or any SQL over the view `samples`."""
    import duckdb

    from pipeline import inspect as views

    try:
        if sql:
            cols, rows = views.query(out, sql)
            print_table(sql, cols, rows)
            return
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
                  f"reasons {r[S.ROUTE_REASONS]}  source {r[S.SOURCE]}")
    if r[S.INPUT_ERROR]:
        console.print(f"input error: {r[S.INPUT_ERROR]}\nraw: {r[S.RAW]}")
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
                              f"fidelity {fid}, images [{imgs}]")
                console.print("  " + (c[S.CELL_STDOUT] or "").strip()[:1500], markup=False, highlight=False)
                if c[S.CELL_ERROR]:
                    console.print("  " + c[S.CELL_ERROR].strip()[:1500], markup=False, highlight=False)
            console.print(f"  [bold]recorded[/] {(t[S.TURN_OBS_TEXT] or '').strip()[:500]}")
    console.print(f"[bold]Final answer[/] {r[S.FINAL_ANSWER]}")
    if r[S.TEXT_RESPONSE]:
        console.print(f"[bold]Text-only version[/] (flags {r[S.TEXT_FLAGS]})\n{r[S.TEXT_RESPONSE]}")


if __name__ == "__main__":
    app()
