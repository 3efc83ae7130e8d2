"""``canopy graval ...``: measure this machine's devices for the supported-GPU table.

For miners and maintainers adding or re-measuring a GPU model. ``calibrate`` runs
honest GraVal challenges at the row's production shape (``plan()`` for the device's
memory) on one local device, with progress bars: the fill and access phases are timed on
their own (hashing included), the first run is opened and checked by the validator's own
verifier. It prints the per-phase rates, the timing window their variance justifies, the
separation table (honest, half memory, 90% memory, one device answering two claims from two
threads and from two processes: the per-phase time ratios and whether the window refuses
each) and a ``gpus.toml`` row with ``calibrated = true``. The arithmetic is
``miner.graval.calibration``'s; a variance too large for a window below 2.0 prints no row
and exits 1.
"""

from __future__ import annotations

import math
import threading

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from miner.graval import calibration as cal

from miner.graval import separation
from miner.graval.backends import BACKEND_NAMES, pick_backend
from miner.inventory import cpu_device, discover_devices
from protocol.graval.devices import MAX_WINDOW_HIGH, DeviceRejected, load_gpu_table, match_model
from protocol.graval.spec import ChallengeSpec, plan

app = typer.Typer(help="GraVal, the open GPU verification: calibration of local devices.", no_args_is_help=True)
console = Console()


def _bars() -> tuple[Progress, cal.Progress]:
    """A rich progress display and the (label, phase, done, total) callback that feeds it."""
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TimeElapsedColumn(), console=console)
    tasks: dict[str, tuple[TaskID, int]] = {}  # label -> (task, matrices)
    lock = threading.Lock()

    def tick(label: str, phase: str, done: int, total: int) -> None:
        with lock:
            if label not in tasks:
                tasks[label] = (progress.add_task(label, total=total), total)
            task, matrices = tasks[label]
            if phase == "fill":
                progress.update(task, completed=done, description=f"{label}: fill {done}/{total}")
            else:
                progress.update(task, total=matrices + total, completed=matrices + done,
                                description=f"{label}: access {done}/{total}")

    return progress, tick


def _runs_table(result: cal.Calibration) -> Table:
    table = Table(title=f"honest runs on {result.backend}")
    for column in ("run", "shape", "fill s", "fill MAC/s", "access s", "access MAC/s", "self-check"):
        table.add_column(column)
    for index, run in enumerate(result.runs, start=1):
        check = "" if run.verified is None else ("ok" if run.verified else f"FAILED {run.verify_detail}")
        table.add_row(str(index), f"n={run.n} b={run.b} m={run.m} steps={run.steps}", f"{run.fill_s:.3f}",
                      f"{run.fill_rate:.4g}", f"{run.access_s:.3f}", f"{run.access_rate:.4g}", check)
    table.add_row("median", "", "", f"{result.fill_rate:.4g}", "", f"{result.access_rate:.4g}", "")
    table.add_row("cv", "", "", f"{result.fill_cv:.2%}", "", f"{result.access_cv:.2%}", "")
    return table


def _separation_table(rows: list[separation.SeparationRow], window: cal.Window) -> Table:
    table = Table(title=f"separation: phase time / honest median (window {window.low:.2f}-{window.high:.2f}, {window.source})")
    for column in ("case", "fill x", "access x", "verdict", "detail"):
        table.add_column(column)
    for row in rows:
        access = "n/a" if math.isnan(row.access_ratio) else f"{row.access_ratio:.2f}" + ("+" if row.stopped else "")
        verdict = f"[green]refused ({row.phase})[/]" if row.refused else "accepted"
        if row.case.startswith("honest"):
            verdict = "[red]REFUSED[/]" if row.refused else "[green]accepted[/]"
        elif not row.refused:
            verdict = "[red]accepted[/]"
        table.add_row(row.case, f"{row.fill_ratio:.2f}", access, verdict, row.detail)
    return table


@app.command()
def calibrate(
    device: int = typer.Option(0, "--device", min=0, help="Index of the device to measure (see the list printed)."),
    backend: str = typer.Option("auto", "--backend", help=f"auto, {', '.join(BACKEND_NAMES)}."),
    n: int = typer.Option(0, "--n", help="Matrix size (default: the matched table row's, else 16384 on GPUs, 1024 on CPU)."),
    fill_fraction: float = typer.Option(0.95, "--fill", min=0.05, max=0.97, help="Share of the device memory to fill."),
    runs: int = typer.Option(cal.MIN_RUNS, "--runs", min=1, max=30,
                             help=f"Honest challenges to time (at least {cal.MIN_RUNS} for a window)."),
    steps_per_matrix: int = typer.Option(0, "--steps-per-matrix", min=0,
                                         help="Access steps per matrix (default: the row's, 64 on GPUs, 16 on CPU)."),
    separation_matrices: int = typer.Option(40, "--sep-m", min=0,
                                            help="Matrices of the separation table's challenges (0: no table)."),
    cpu: bool = typer.Option(False, "--cpu", help="Measure the CPU pseudo-device (no GPU needed)."),
    cpu_memory_mb: int = typer.Option(64, "--cpu-memory-mb", min=16, help="Memory the CPU pseudo-device claims."),
) -> None:
    """Time honest GraVal challenges on one local device; print its rates, window, separation table and gpus.toml row."""
    devices = [cpu_device(memory_bytes=cpu_memory_mb << 20)] if cpu else discover_devices(allow_cpu=False)
    if not devices:
        console.print("[red]no GPU found[/] (nvidia-ml-py or torch with CUDA is needed); use --cpu to measure the CPU pseudo-device")
        raise typer.Exit(1)
    for found in devices:
        console.print(f"device {found.index}: {found.name}  {found.memory_bytes / 2**30:.1f} GiB  {found.sm_count} SMs  "
                      f"cc {found.compute_capability}  {found.uuid}")
    chosen = next((found for found in devices if found.index == device), None)
    if chosen is None:
        console.print(f"[red]no device {device}[/]: pick one of {[found.index for found in devices]} with --device")
        raise typer.Exit(1)
    try:
        model = match_model(chosen, load_gpu_table(), allow_cpu=cpu)
        console.print(f"matches table row [bold]{model.id}[/]")
    except DeviceRejected as rejected:
        model = None
        console.print(f"no table row matches ({rejected.reason}): {rejected}")
    devnet = cpu or (model is not None and model.devnet_only)
    size = n or (model.graval_n if model else (1024 if cpu else 16384))
    width = max(8, size // 64)
    spm = steps_per_matrix or (model.graval_steps_per_matrix if model else (16 if cpu else 64))
    engine = pick_backend("numpy" if cpu and backend == "auto" else backend, chosen.index)
    try:
        production = plan(chosen.uuid, chosen.memory_bytes, n=size, b=width, fill_fraction=fill_fraction, steps_per_matrix=spm)
    except ValueError as error:
        console.print(f"[red]{error}[/]")
        raise typer.Exit(1) from None
    console.print(f"backend {engine.name}; challenge n={size} b={width} m={production.m} steps={production.steps} "
                  f"({production.resident_bytes / 2**30:.2f} GiB resident), {runs} run(s)")

    def make_spec() -> ChallengeSpec:
        return plan(chosen.uuid, chosen.memory_bytes, n=size, b=width, fill_fraction=fill_fraction, steps_per_matrix=spm)

    bars, tick = _bars()
    with bars:
        result = cal.calibrate(engine, make_spec, runs, progress=tick)
    console.print(_runs_table(result))
    if result.verified is False:
        failed = next(run for run in result.runs if run.verified is False)
        console.print(f"[red]the device failed its own challenge:[/] {failed.verify_detail}")
        raise typer.Exit(1)

    try:
        window = cal.derive_window(result.fill_cv, result.access_cv, len(result.runs), limit=None if devnet else MAX_WINDOW_HIGH)
        refused = None
    except cal.WindowRefused as error:
        window, refused = cal.limit_window(len(result.runs)), str(error)
    if refused is None:
        console.print(f"window {window.low:.3f}-{window.high:.3f}: cv {window.cv:.2%} (90% bound {window.cv_bound:.2%} "
                      f"over {window.runs} runs), k = {window.k:g}, device spread {window.spread:.0%}")
    else:
        console.print(f"[yellow]no window derived:[/] {refused}")

    if separation_matrices:
        sep_m = min(production.m, separation_matrices)
        sep_spec, honest = separation.table_shape(make_spec, sep_m == production.m, chosen.uuid, size, width, sep_m, spm,
                                                  result.runs)
        bars, tick = _bars()
        with bars:
            rows = separation.separation_table(engine, sep_spec, window, honest=honest, progress=tick, device_index=chosen.index)
        console.print(_separation_table(rows, window))
        console.print(f"separation shape: n={size} b={width} m={sep_m} steps={spm * sep_m}; a '+' marks a phase stopped "
                      f"at {separation.CHEAT_CAP:g}x the honest median")

    if refused is not None and not devnet:
        console.print("[red]no gpus.toml row:[/] the window cannot refuse the cheats with this variance")
        raise typer.Exit(1)
    if devnet:
        console.print("the devnet CPU row keeps its table window (one CPU shared by the whole devnet)")
    row = cal.render_row(result, window, n=size, b=width, steps_per_matrix=spm, device=chosen, model=model)
    console.print("\n[bold]gpus.toml row[/] (review the name pattern, memory and clock ranges before adding it):\n")
    console.print(row, markup=False, highlight=False)
