"""`twi-curate` command line: run, inspect, report, sample-corpus, sandbox check|run."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
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


# ------------------------------------------------------------------------------------------------
# The console of `twi-curate run`: one progress display and the summary; Ray's output goes to a log
# ------------------------------------------------------------------------------------------------
LOGS_DIR = "logs"  # OUT/logs/run-<run_id>.log: what Ray, Ray Data and the workers printed
PLAIN_PROGRESS_EVERY_S = 10.0  # not a terminal (cron, `> log`): one progress line this often
PLAIN_PROGRESS_IDLE_S = 60.0  # ... but when nothing moved, only this often
KEEP_LOGS = 30  # OUT/logs keeps the newest run logs (a daily cron job: a month)
PROGRESS_STAGES = ("replay", "judges", "llm_judges", "routing")  # pipeline.metrics stage names, in order


def _real_fd(stream: Any, fd: int) -> bool:
    """``stream`` writes straight to file descriptor ``fd`` (not e.g. typer's CliRunner buffer)."""
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        return False


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_text(p: dict[str, Any]) -> tuple[str, str]:
    """A progress report of pipeline.progress.progress_poller -> (stage, "done/total samples, samples/s, ETA")."""
    total, done, stages = p["total"], p["done"], p["stages"]
    todo = total - (done - stages.get("routing", 0))  # what this run routes (a resumed run did the rest)
    if not stages:
        stage = "starting actors"
    else:
        stage = next((s for s in PROGRESS_STAGES if (s in stages or s != "llm_judges") and stages.get(s, 0) < todo),
                     "writing")
    routed, elapsed = stages.get("routing", 0), p["elapsed_s"]
    rate = routed / elapsed if routed and elapsed > 0 else None
    eta = "?" if rate is None else _duration(max(total - done, 0) / rate)
    counts = " ".join(f"{s} {stages[s]}" for s in PROGRESS_STAGES if s in stages)
    text = (f"{done}/{total} samples, {'-' if rate is None else f'{rate:.2f}'} samples/s, ETA {eta}, "
            f"elapsed {_duration(elapsed)}" + (f" ({counts})" if counts else ""))
    return stage, text


class RunConsole:
    """`twi-curate run`'s console (README "Command line"). By default the terminal shows one
    progress display (a live line on a terminal; on a non-terminal, e.g. cron, one plain line every
    PLAIN_PROGRESS_EVERY_S) and what `run` prints itself; everything the process and Ray write to
    file descriptors 1 and 2 (Ray's warnings and progress, Ray Data's INFO lines, C++ core-worker
    lines, worker logs, Python warnings) goes to OUT/logs/run-<id>.log, while ``console`` and
    ``err`` keep writing to the saved terminal. ``verbose``: nothing is redirected and Ray shows
    its own progress (no display of ours). Where stdout/stderr are not the real descriptors (typer's
    CliRunner, an embedding program) nothing is redirected either; the display still runs."""

    def __init__(self, out: Path, verbose: bool = False, show_progress: bool = True):
        self.out, self.verbose, self.show_progress = Path(out), verbose, show_progress and not verbose
        self.log_path: Path | None = None
        self._saved: tuple[int, int] | None = None
        self._streams: list[Any] = []
        self._live: Any = None  # rich Progress on a terminal
        self._task: Any = None
        self._last_line = (0.0, None)  # plain mode: (when, done) of the last line printed
        self._last: dict[str, Any] | None = None
        self._started_ray = False
        self._created: list[Path] = []
        self._header_bytes = 0

    # -- redirection --------------------------------------------------------------------------
    def __enter__(self) -> RunConsole:
        if not self.verbose and _real_fd(sys.stdout, 1) and _real_fd(sys.stderr, 2):
            self._redirect()
        if self.show_progress:
            self._start_display()
        return self

    def _redirect(self) -> None:
        import ray

        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        logs = self.out / LOGS_DIR
        self._created = [d for d in (logs, self.out) if not d.exists()]  # removed again if left empty
        try:
            logs.mkdir(parents=True, exist_ok=True)
            for old in sorted(logs.glob("run-*.log"), key=lambda p: p.stat().st_mtime)[: -(KEEP_LOGS - 1)]:
                old.unlink()
            path = logs / f"run-{stamp}-{os.getpid()}.log"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError:
            return  # OUT not writable: run_pipeline says so; Ray's lines stay on the console
        header = f"twi-curate run, started {stamp} UTC: {' '.join(sys.argv)}\n".encode()
        with contextlib.suppress(OSError):  # a full disk: the run reports it
            self._header_bytes = os.write(fd, header)
        self._started_ray = not ray.is_initialized()
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        os.dup2(fd, 1)
        os.dup2(fd, 2)  # Ray's processes started from here inherit these too
        os.close(fd)
        enc = sys.stdout.encoding or "utf-8"
        self._streams = [os.fdopen(f, "w", encoding=enc, errors="replace", closefd=False) for f in self._saved]
        console.file, err.file = self._streams
        self.log_path = path

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self._stop_display(ok=exc_type is None)
            if self._saved is not None and self._started_ray:  # its shutdown lines go to the log too
                import ray

                with contextlib.suppress(Exception):  # the results are written; exiting stops Ray anyway
                    ray.shutdown()
        finally:  # even on a second Ctrl-C
            if self._saved is not None:
                self._restore()
        if exc_type is not None and self.log_path is not None:
            try:
                empty = self.log_path.stat().st_size <= self._header_bytes
            except OSError:
                empty = False
            if empty:  # the run failed before Ray said anything (e.g. a missing input)
                self.log_path.unlink()
                self.log_path = None
                for d in self._created:  # OUT/logs (and OUT) made for it
                    with contextlib.suppress(OSError):
                        d.rmdir()
            else:
                err.print(f"Ray and worker log: {self.log_path}", soft_wrap=True, highlight=False)

    def _restore(self) -> None:
        for stream in (sys.stdout, sys.stderr, *self._streams):
            with contextlib.suppress(OSError, ValueError):  # e.g. the log's disk is full
                stream.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for f in self._saved:
            os.close(f)
        self._saved = None
        console.file = err.file = None  # back to sys.stdout / sys.stderr

    def keep_as(self, run_id: str) -> None:
        """Name the log after the run (OUT/logs/run-<run_id>.log)."""
        if self.log_path is None:
            return
        dest = self.log_path.with_name(f"run-{run_id}.log")
        n = 1
        while dest.exists():  # a resumed run keeps its run id: the earlier attempt's log stays
            n += 1
            dest = self.log_path.with_name(f"run-{run_id}.{n}.log")
        with contextlib.suppress(OSError):
            self.log_path = self.log_path.rename(dest)

    # -- progress display -----------------------------------------------------------------------
    def _start_display(self) -> None:
        if console.is_terminal:
            from rich.progress import BarColumn, Progress, TextColumn

            self._live = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[text]}"),
                console=console, redirect_stdout=False, redirect_stderr=False, refresh_per_second=4,
            )
            self._task = self._live.add_task("preparing", total=None, text="plan, sandbox check, Ray, dedup pre-pass")
            self._live.start()
        else:
            console.print("progress: preparing (plan, sandbox check, Ray, dedup pre-pass)", soft_wrap=True,
                          highlight=False)

    def progress(self, report: dict[str, Any]) -> None:
        """run_pipeline's ``progress`` callback (called from a driver thread about every second)."""
        self._last = report
        stage, text = progress_text(report)
        if self._live is not None:
            self._live.update(self._task, description=stage, completed=report["done"],
                              total=max(report["total"], 1), text=text)
            return
        now, (last_t, last_done) = time.monotonic(), self._last_line
        wait = PLAIN_PROGRESS_EVERY_S if report["done"] != last_done else PLAIN_PROGRESS_IDLE_S
        if last_done is None or now - last_t >= wait:
            self._last_line = (now, report["done"])
            console.print(f"progress: {stage} | {text}", soft_wrap=True, highlight=False)

    def _stop_display(self, ok: bool) -> None:
        if self._live is not None:
            if ok and self._last is not None:
                self._live.update(self._task, description="done")
            self._live.stop()
            self._live = None
        elif self.show_progress and ok and self._last is not None and self._last_line[1] != self._last["done"]:
            console.print(f"progress: done | {progress_text(self._last)[1]}", soft_wrap=True, highlight=False)

    def warn(self, msg: str) -> None:
        """A warning users must see (e.g. a weak sandbox): on the terminal, above the live display."""
        text = f"[bold red]WARNING:[/] [red]{escape(msg)}[/]"
        (self._live.console if self._live is not None else err).print(text)


# Exit codes of `twi-curate run` (README "Scheduled runs"): 0 done (or nothing to add);
EXIT_CANNOT_START = 2  # bad config, input, format, benchmark or sandbox level; usage errors
EXIT_LOCKED = 3  # another run is writing into OUT
EXIT_WRITE_FAILED = 4  # writing the results failed (disk full, read-only, I/O); OUT unchanged
EXIT_JUDGES_FAILED = 5  # more than judges.llm.max_error_rate of LLM judgements failed; results published
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGINT; OUT unchanged


def _fail(msg: str, code: int = EXIT_CANNOT_START) -> None:
    err.print(f"[bold red]error:[/] {msg}", soft_wrap=True)  # one line, whatever the width (logs, cron)
    raise typer.Exit(code=code)


def local_ray_on_loopback(address: str | None) -> None:
    """A local Ray (no ``--address``) listens on 127.0.0.1 only. Ray reads the setting once, when
    it is imported: set later, its GCS and raylet listen on every interface. Not for a cluster run,
    whose driver must be reachable at the machine's address."""
    if address is None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


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
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress display; worker logs not collected")] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Ray's own progress, warnings and worker logs on the console (no log file)")
    ] = False,
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
    local_ray_on_loopback(address)  # before anything imports ray
    from pipeline.config import ConfigError, load_config, with_image_roots, with_llm_judge
    from pipeline.run import run_pipeline
    from pipeline.tools.evaluate import agreement, find_labels
    from sample_corpus import ensure_sample_corpus

    try:
        cfg = with_image_roots(with_llm_judge(load_config(config), judge_endpoint, judge_model), image_root or [])
    except ConfigError as exc:
        _fail(str(exc))
    if recompute is not None and recompute not in ("replay", "judges", "routing"):
        _fail(f"--recompute must be replay, judges or routing, not {escape(recompute)!r}")
    if not inputs:
        corpus_dir = cache_dir() / f"sample-corpus-n{DEFAULT_N}-s0"
        console.print(f"No INPUT given: using the bundled sample corpus ({corpus_dir})", soft_wrap=True)
        inputs = [ensure_sample_corpus(corpus_dir, n=DEFAULT_N, seed=0)]
    from pipeline.formats import UnknownFormatError
    from pipeline.publish import OutLockedError, WriteFailedError
    from pipeline.run import NothingToCurate
    from pipeline.sandbox.levels import SandboxLevelError
    from pipeline.stages.dedup import BenchmarkError

    if cfg.judges.llm.enabled and cfg.judges.llm.probe:  # fail fast, before any Ray work
        from judges.llm import JudgeEndpointError, probe_endpoint

        try:
            probe_endpoint(cfg.judges.llm)
        except JudgeEndpointError as exc:
            _fail(escape(str(exc)))
    run_console = RunConsole(out, verbose=verbose, show_progress=not quiet)
    try:
        with run_console:  # Ray's output -> OUT/logs (see RunConsole); restored before anything below prints
            manifest = run_pipeline(
                inputs,
                out,
                cfg,
                address=address,
                limit=limit,
                quiet=quiet,
                allow_weak_sandbox=allow_weak_sandbox,
                warn=run_console.warn,
                format=input_format,
                benchmark=benchmark,
                recompute=recompute,
                progress=run_console.progress if run_console.show_progress else None,
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
    run_console.keep_as(manifest["run_id"])
    _print_summary(manifest)
    judges_failed = _print_judge_failure(manifest)
    labels = find_labels(inputs)
    if labels is not None:
        ev = agreement(out, labels)
        (out / "evaluation.json").write_text(json.dumps(ev, indent=2))
        if ev["labeled"]:
            rest = f"; {ev['not_in_out']} labels name records not in {out}" if ev["not_in_out"] else ""
            console.print(
                f"Agreement with {labels.name}: {ev['agree']}/{ev['labeled']} = {ev['agreement']:.1%}{rest} "
                f"(details in {out / 'evaluation.json'})", soft_wrap=True
            )
    console.print(f"Report {_write_report(out)}", soft_wrap=True)
    if not manifest["conservation"]["ok"]:
        _fail("conservation check failed: see manifest.json 'conservation' (this is a bug, please report)")
    console.print(f"Shards in {out / 'shards'}; manifest {out / 'manifest.json'}", soft_wrap=True)
    if run_console.log_path is not None:
        console.print(f"Ray and worker log: {run_console.log_path}", soft_wrap=True, highlight=False)
    if judges_failed:
        f = manifest["judges"]["llm"]["failure"]
        _fail(f"LLM judges failed on {f['error_rate']:.1%} of judgements (more than judges.llm.max_error_rate "
              f"{f['max_error_rate']:.1%}; see above and manifest.json judges.llm.failure); the results were "
              f"published with metric scores for those rows", EXIT_JUDGES_FAILED)


def _print_judge_failure(manifest: dict[str, Any]) -> bool:
    """Loud lines when the LLM judges failed (manifest judges.llm.failure): counts per error kind,
    an example response, why requests stopped, what to do. -> whether the run must end with
    EXIT_JUDGES_FAILED (more than max_error_rate failed)."""
    f = ((manifest.get("judges") or {}).get("llm") or {}).get("failure")
    if not f or not (f["failed"] or f["stopped_early"]):
        return False
    head = "LLM JUDGES FAILED" if f["failed"] else "LLM judges stopped early"
    console.print(
        f"[bold red]{head}:[/] [red]{f['errors']} of {f['judgements']} judgements failed ({f['error_rate']:.1%}; "
        f"judges.llm.max_error_rate {f['max_error_rate']:.1%}); those rows kept their metric scores "
        "(llm_status_<dim> = judge_error:<kind>)[/]",
        soft_wrap=True,
    )
    for kind, n in f["by_kind"].items():
        console.print(f"  [bold yellow]![/] {escape(kind)}: {n}", soft_wrap=True)
    if f.get("reason"):
        console.print(f"  stopped: {escape(f['reason'])}", soft_wrap=True)
    if f.get("example"):
        console.print(f"  example response: {escape(f['example'])}", soft_wrap=True, highlight=False)
    console.print(
        "  what to do: check the endpoint (server logs, model name, the rubric's 0..1 scale, "
        "judges.llm.timeout_s / deadline_s), then rerun with --recompute judges: answers already "
        "received are cached, only the failed ones are sent again",
        soft_wrap=True,
    )
    return bool(f["failed"])


def _print_summary(manifest: dict[str, Any]) -> None:
    # the title on its own line: a table narrower than it would wrap it in a log (80 columns)
    console.print(f"run {manifest['run_id']}: {manifest['input_records']} input records", soft_wrap=True)
    table = Table()
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
        f"{'; ' + stages if stages else ''})", soft_wrap=True
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

    from pipeline.tools import inspect as views

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
    from sample_corpus import build_sample_corpus

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

    from pipeline.tools.export import FORMATS
    from pipeline.tools.export import export as do_export
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
    """`run` ends by writing OUT/report.html (pipeline.tools.report); -> the line to print. The results are
    published already: a report that cannot be written (disk full) is a warning, not a failed run."""
    from pipeline.tools.report import write_report

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
    from pipeline.tools.report import parse_samples, write_report

    try:
        n = parse_samples(samples)
    except ValueError:
        _fail("--samples takes a number >= 0 or 'all'")
    try:
        result = write_report(out, dest, n)
    except FileNotFoundError as exc:
        _fail(str(exc))
    console.print(f"Report {result.summary()}", soft_wrap=True)


@app.command()
def explain(
    out: Annotated[Path, typer.Argument(help="output folder of a run")],
    sample_id: Annotated[str, typer.Argument(help="sample_id to explain")],
) -> None:
    """A sample's route, reasons, scores with explanations, and its trajectory with replayed cells."""
    from pipeline.tools.shards import VIEW, connect, fetch_rows

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
