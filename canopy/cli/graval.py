"""``canopy graval ...``: measure this machine's devices for the supported-GPU table.

Callers: miners and maintainers adding a GPU model. ``calibrate`` runs full GraVal
challenges (prove, then the validator's own checks) on one local device, with a progress
bar, and prints the device's spec, the measured throughput and a ``gpus.toml`` row
(``challenge_macs_per_s`` is the median measured figure, windows from the spread).
"""

from __future__ import annotations

import re
import statistics
import time

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from miner.graval.backends import pick_backend
from miner.graval.prover import Prover
from miner.inventory import cpu_device, discover_devices
from protocol.graval.devices import DeviceRejected, load_gpu_table, match_model
from protocol.graval.spec import plan, samples_needed
from validator.graval.verifier import leaves_for, pick_samples, verify

app = typer.Typer(help="GraVal, the open GPU verification: calibration of local devices.", no_args_is_help=True)
console = Console()


@app.command()
def calibrate(
    device: int = typer.Option(0, "--device", min=0, help="Index of the device to measure (see the list printed)."),
    backend: str = typer.Option("auto", "--backend", help="auto, torch-cuda, cupy, numpy or torch-cpu."),
    n: int = typer.Option(0, "--n", help="Matrix size (default: the matched table row's, else 16384 on GPUs, 1024 on CPU)."),
    fill_fraction: float = typer.Option(0.95, "--fill", min=0.05, max=0.97, help="Share of the device memory to fill."),
    runs: int = typer.Option(3, "--runs", min=1, max=20, help="Challenges to run (the median is reported)."),
    cpu: bool = typer.Option(False, "--cpu", help="Measure the CPU pseudo-device (no GPU needed)."),
    cpu_memory_mb: int = typer.Option(64, "--cpu-memory-mb", min=16, help="Memory the CPU pseudo-device claims."),
) -> None:
    """Run GraVal challenges on one local device and print its gpus.toml row."""
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
    size = n or (model.graval_n if model else (1024 if cpu else 16384))
    engine = pick_backend("numpy" if cpu else backend, chosen.index)
    rates = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as progress:
        for run in range(runs):
            spec = plan(chosen.uuid, chosen.memory_bytes, n=size, b=max(8, size // 64), fill_fraction=fill_fraction)
            task = progress.add_task(f"run {run + 1}/{runs}: fill {spec.m} matrices", total=spec.m + spec.steps)
            prover = Prover(spec, engine, progress=lambda phase, done, total, task=task, spec=spec:
                            progress.update(task, completed=done if phase == "fill" else spec.m + done))
            started = time.perf_counter()
            commitment = prover.prove()
            elapsed = time.perf_counter() - started
            samples = pick_samples(spec, samples_needed())
            verdict = verify(spec, commitment, samples, prover.open(leaves_for(spec, commitment, samples)))
            prover.release()
            if not verdict.ok:
                console.print(f"[red]the device failed its own challenge:[/] {verdict.reason}: {verdict.detail}")
                raise typer.Exit(1)
            rates.append(spec.work_macs / elapsed)
            progress.update(task, description=f"run {run + 1}/{runs}: {elapsed:.2f} s, {rates[-1] / 1e12:.3f} TMAC/s")
    median = statistics.median(rates)
    spread = (max(rates) - min(rates)) / median if len(rates) > 1 else 0.0
    console.print(f"backend {engine.name}: median {median:.4g} MAC/s over {runs} runs (spread {spread:.1%})")
    row_id = model.id if model else "new_gpu"
    console.print("\n[bold]gpus.toml row[/] (review memory and clock ranges before adding it):\n")
    console.print(
        f"[[gpu]]\nid = \"{row_id}\"\nname_pattern = '{re.escape(chosen.name)}'\n"
        f"memory_gb_min = {chosen.memory_bytes / 2**30 * 0.98:.4g}\nmemory_gb_max = {chosen.memory_bytes / 2**30 * 1.02:.4g}\n"
        + ("" if model and model.sm_count is None else f"sm_count = {chosen.sm_count}\n")
        + f"sm_clock_mhz_min = {int(chosen.max_sm_clock_mhz * 0.9)}\n"
        f"sm_clock_mhz_max = {int(chosen.max_sm_clock_mhz * 1.1)}\ncompute_capability = \"{chosen.compute_capability}\"\n"
        f"graval_n = {size}\ngraval_b = {max(8, size // 64)}\nchallenge_macs_per_s = {median:.3g}\n"
        f"window_low = 0.5\nwindow_high = {max(1.5, 1.25 + 2 * spread):.2f}\n"
        f"compute_multiplier = {model.compute_multiplier if model else 1.0}\n"
        + ("devnet_only = true\n" if model and model.devnet_only else ""),
        markup=False, highlight=False,
    )
