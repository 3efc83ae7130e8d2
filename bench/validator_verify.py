"""The validator benchmark's exact verifier-cost measurement (seam: the CPU the validator
spends re-verifying one production-size device, away from the simulated miners).

Run by ``bench/validator.py``: ``reverify_cost`` (in the parent) starts a fresh process
(``--role verify-cost --config FILE``, ``verify_cost``) and turns its figures into the
per-hour cost at the default schedule:

- ``verify_cpu_s_per_device``: ``time.thread_time`` around everything the validator does
  for one device once its proof is back (all in one thread): ``pick_samples``, parsing the
  ``Commitment``, ``leaves_for``, building the ``Open`` request,
  ``Openings.model_validate_json`` of the wire bytes and ``verify``, with the
  re-verification sample count ``samples_needed(failure=REVERIFY_FAILURE)`` (137 per phase at 1e-2); median of
  ``--verify-repeats`` (``*_min``: the fastest, what a quiet core gives;
  ``verify_loadavg_1m``: the machine's load meanwhile). The access-index chain is memoised
  per commitment (``validator.graval.verifier.access_indices``): the cache is cleared
  before each timed device, so the chain is recomputed once, as for a fresh commitment.
- ``verify_cpu_s_per_hour`` = that x ``devices_reverified_per_hour`` (miners x devices x
  3600 / reverify_s); ``verify_share_of_core`` = that / 3600.

It is measured directly at PRODUCTION shape: the h100 row's n = 16384 (b = 256) with the
m and steps an 80 GB H100 gets (``prod_m``, ``prod_steps``). The cost is not independent
of m and steps: they decide how many opened leaves are distinct (a fill sample of M_0
opens one row instead of two; X leaves collide when steps x b is small), how many Merkle
paths share nodes, and the length of the access-index chain the verifier recomputes; a
short chain (m = 2, 4 steps) opens ~40% fewer leaves and under-counts the CPU by ~30%. A
real proof of that shape takes hours on a CPU, so the rounds are EXACT at the samples
instead (``exact_round``): the samples are drawn with a seeded rng before the
"commitment" is built, every opened row/column lies on a genuine Merkle path to its root,
every sampled entry is the true product of its opened inputs (G, X_0 and the noise
regenerated from the spec), the rest is random; the verifier does exactly an honest
round's work and must answer ok. ``check_*``: the method against a real honest proof of
one shape (``--check-n/m/steps``, default n = 1024, m = 16, 256 steps; ``--prod``: n =
16384, m = 2, 4 steps, minutes and ~13 GB), interleaved, same samples count;
``check_exact_over_real`` should be ~1. ``verify_cpu_s_at_n*``, ``verify_fit_*``: the same
at smaller n (production m and steps), fitted as a + b n. ``first_verify_cpu_s_per_device``:
410 samples per phase (a device seen for the first time), for information.
``openings_wire_mb``: the Openings body the dendrite parses on the event loop per device.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console

from bench.children import run_child, write_config
from bench.report import progress

MIB = 1 << 20


class SparseTree:
    """A Merkle tree over ``count`` leaves of which only ``real`` (index -> leaf hash) are known:
    every other subtree is a random node. Its paths are genuine for the real leaves."""

    def __init__(self, count: int, real: dict[int, bytes], rng: random.Random) -> None:
        from protocol.graval.merkle import node_hash

        self.depth = count.bit_length() - 1
        self.nodes = {(0, index): digest for index, digest in real.items()}
        current = set(real)
        for level in range(self.depth):
            parents = set()
            for position in current:
                sibling = (level, position ^ 1)
                if sibling not in self.nodes:
                    self.nodes[sibling] = rng.randbytes(32)
                pair = sorted((position, position ^ 1))
                self.nodes[(level + 1, position >> 1)] = node_hash(self.nodes[(level, pair[0])], self.nodes[(level, pair[1])])
                parents.add(position >> 1)
            current = parents
        self.root = self.nodes[(self.depth, 0)]

    def path(self, index: int) -> list[bytes]:
        return [self.nodes[(level, (index >> level) ^ 1)] for level in range(self.depth)]


def exact_round(spec: Any, count: int, seed: int) -> tuple[list, str, str]:
    """(samples, commitment wire, openings wire) of a round whose samples are known in advance
    (``pick_samples`` with a seeded rng): every opened leaf lies on a genuine Merkle path to
    its root and every sampled entry is the product of its opened inputs, so ``verify``
    does exactly the work of an honest round of this shape and passes; the entries that
    are not sampled are random (nothing computes them: n = 16384 takes a second, not hours)."""
    import numpy as np

    from protocol.graval.field import HALF, P, SBOX, hash_residues
    from protocol.graval.merkle import leaf_hash
    from protocol.graval.spec import access_index
    from protocol.graval.synapses import Commitment, LeafOpening, Openings
    from validator.graval.verifier import leaves_for, pick_samples

    rng, noise_rng = random.Random(seed), np.random.default_rng(seed)
    n, b = spec.n, spec.b
    samples = pick_samples(spec, count, rng)
    keys: dict[str, tuple[int, int]] = {}

    def key(label: str) -> tuple[int, int]:
        if label not in keys:
            keys[label] = spec.key(label)
        return keys[label]

    def generated(label: str, counters: Any) -> Any:
        return hash_residues(np.asarray(counters, dtype=np.int64), key(label))

    def entry(left: Any, right: Any, labels: tuple[str, str], row: int, col: int) -> int:
        noise = int(generated(labels[0], [row])[0]) + int(generated(labels[1], [col])[0])
        value = int(SBOX[(int(np.dot(left.astype(np.int64), right.astype(np.int64))) % P + noise) % P])
        return value - P if value > HALF else value

    content: dict[tuple[str, int, int], Any] = {}  # ("M", i, row) / ("X", t, col) -> centred int8 entries

    def leaf(kind: str, index: int, position: int) -> Any:
        if (kind, index, position) not in content:
            content[(kind, index, position)] = noise_rng.integers(-HALF, HALF + 1, size=n, dtype=np.int8)
        return content[(kind, index, position)]

    for sample in sorted((s for s in samples if s.kind == "fill"), key=lambda s: s.index):
        i, r, c = sample.index, sample.row, sample.col
        left = leaf("M", i - 1, r) if i > 0 else generated("G", r * n + np.arange(n))
        leaf("M", i, r)[c] = entry(left, generated("G", np.arange(n) * n + c), (f"u{i}", f"v{i}"), r, c)
    by_step: dict[int, list] = {}
    opened_x: dict[int, set[int]] = {}
    for sample in samples:
        if sample.kind == "access":
            by_step.setdefault(sample.index, []).append(sample)
            opened_x.setdefault(sample.index, set()).add(sample.col)
            if sample.index > 1:
                opened_x.setdefault(sample.index - 1, set()).add(sample.col)
    state_roots, previous = [], b""
    for t in range(1, spec.steps + 1):
        j = access_index(spec, t, previous)
        for sample in by_step.get(t, ()):
            r, c = sample.row, sample.col
            right = leaf("X", t - 1, c) if t > 1 else generated("x0", np.arange(n) * b + c)
            leaf("X", t, c)[r] = entry(leaf("M", j, r), right, (f"au{t}", f"av{t}"), r, c)
        if t in opened_x:
            tree = SparseTree(b, {col: leaf_hash(leaf("X", t, col).tobytes()) for col in opened_x[t]}, rng)
            content.update({("Xtree", t, 0): tree})
            previous = tree.root
        else:
            previous = rng.randbytes(32)
        state_roots.append(previous.hex())
    rows_of: dict[int, dict[int, bytes]] = {}
    for (kind, index, position), data in list(content.items()):
        if kind == "M":
            rows_of.setdefault(index, {})[position] = leaf_hash(data.tobytes())
    matrix_trees = {index: SparseTree(n, rows, rng) for index, rows in rows_of.items()}
    commitment = Commitment(challenge_id=spec.challenge_id, state_roots=state_roots,
                            matrix_roots=[(matrix_trees[i].root if i in matrix_trees else rng.randbytes(32)).hex()
                                          for i in range(spec.m)])
    openings = []
    for ref in leaves_for(spec, commitment, samples):
        if ref.kind == "M":
            data, path = content[("M", ref.index, ref.leaf)], matrix_trees[ref.index].path(ref.leaf)
        else:
            data, path = content[("X", ref.index, ref.leaf)], content[("Xtree", ref.index, 0)].path(ref.leaf)
        openings.append(LeafOpening.build(ref, data.tobytes(), path))
    wire = Openings(challenge_id=spec.challenge_id, leaves=openings).model_dump_json()
    return samples, commitment.model_dump_json(), wire


def forget_access_indices() -> None:
    """Empty the verifier's per-commitment memo of the access-index chain, so the next device
    pays for its chain once, as a fresh commitment does in the validator."""
    from validator.graval import verifier

    memo = getattr(verifier, "_access_indices", None)
    if memo is not None and hasattr(memo, "cache_clear"):
        memo.cache_clear()


def validator_cpu(spec: Any, count: int, samples: list, commitment_wire: str, wire: str) -> tuple[float, int]:
    """Thread CPU of what the validator does for one device once the proof is back: pick the
    samples, parse the commitment, pick the leaves, build the Open request, parse the
    openings, verify. Returns (seconds, leaves opened); raises if the verdict is not ok."""
    from protocol.graval.synapses import Commitment, Open, Openings
    from validator.graval.verifier import leaves_for, pick_samples, verify

    forget_access_indices()  # building the round computed this commitment's chain already
    time.sleep(0.02)
    tick = time.thread_time()
    pick_samples(spec, count)  # its cost (a SystemRandom, as in the validator); the planned samples are used
    commitment = Commitment.model_validate_json(commitment_wire)
    refs = leaves_for(spec, commitment, samples)
    Open(challenge_id=spec.challenge_id, leaves=refs).to_json()
    verdict = verify(spec, commitment, samples, Openings.model_validate_json(wire))
    cpu = time.thread_time() - tick
    if not verdict.ok:
        raise SystemExit(f"validator bench: the verifier rejected an honest round at n={spec.n}, m={spec.m}, "
                         f"steps={spec.steps}: {verdict.reason}: {verdict.detail}")
    return cpu, len(refs)


def real_round(spec: Any, prover: Any, count: int) -> tuple[list, str, str]:
    """The same from a real proof: samples picked after the commitment, opened by the prover."""
    from validator.graval.verifier import leaves_for, pick_samples

    commitment = prover.commitment
    samples = pick_samples(spec, count)
    wire = prover.open(leaves_for(spec, commitment, samples)).model_dump_json()
    return samples, commitment.model_dump_json(), wire


def verify_cost(config_path: str) -> None:
    """The validator's thread CPU per device challenge; prints one JSON line."""
    from miner.graval.backends import pick_backend
    from miner.graval.prover import Prover
    from protocol.graval.spec import ChallengeSpec

    config = json.loads(Path(config_path).read_text())
    console = Console(stderr=True)
    repeats, m, steps = config["repeats"], config["prod_m"], config["prod_steps"]
    out: dict[str, Any] = {"points": []}
    uuid = "GPU-00000000-bench-validator"

    def measure_exact(spec: Any, count: int, seeds: Sequence[int]) -> tuple[float, float, int, float]:
        runs, size = [], 0
        for seed in seeds:
            samples, commitment_wire, wire = exact_round(spec, count, seed)
            runs.append(validator_cpu(spec, count, samples, commitment_wire, wire))
            size = len(wire)
        cpu = [seconds for seconds, _ in runs]
        return statistics.median(cpu), min(cpu), runs[-1][1], size / MIB

    with progress(console) as bar:
        points = [(n, label, count) for n in config["ns"] for label, count in config["samples"].items()
                  if label == "reverify" or n == config["prod_n"]]
        task = bar.add_task("verifier CPU per device (exact rounds, production m and steps)", total=len(points) * repeats)
        for n, label, count in points:
            spec = ChallengeSpec.fresh(uuid, n=n, b=max(8, n // 64), m=m, steps=steps)
            seeds = [bar.update(task, advance=1) or 1000 * n + k for k in range(repeats)]
            cpu, fastest, leaves, size = measure_exact(spec, count, seeds)
            entry = next((p for p in out["points"] if p["n"] == n), None)
            if entry is None:
                entry = {"n": n}
                out["points"].append(entry)
            entry.update({f"{label}_cpu_s": cpu, f"{label}_cpu_s_min": fastest, f"{label}_leaves": leaves,
                          f"{label}_wire_mb": size})

    # Cross-check of the method: a real honest proof and exact rounds of the same shape.
    check = config["check"]
    spec = ChallengeSpec.fresh(uuid, n=check["n"], b=max(8, check["n"] // 64), m=check["m"], steps=check["steps"])
    backend = pick_backend(config["backend"])
    with progress(console) as bar:
        task = bar.add_task(f"cross-check: real proof n={spec.n} m={spec.m} steps={spec.steps} on {backend.name}",
                            total=spec.m + spec.steps)
        prover = Prover(spec, backend, progress=lambda phase, done, total: bar.update(
            task, completed=done if phase == "fill" else spec.m + done))
        prover.commitment = prover.prove()
    count = config["samples"]["reverify"]
    real, exact = [], []
    for k in range(3 * repeats):  # interleaved, so both see the same machine (cheap at the check's size)
        real.append(validator_cpu(spec, count, *real_round(spec, prover, count)))
        exact.append(validator_cpu(spec, count, *exact_round(spec, count, 7 + k)))
    prover.release()
    out["check"] = {"n": spec.n, "m": spec.m, "steps": spec.steps, "backend": backend.name,
                    "real_cpu_s": statistics.median(cpu for cpu, _ in real), "real_leaves": real[-1][1],
                    "exact_cpu_s": statistics.median(cpu for cpu, _ in exact), "exact_leaves": exact[-1][1]}
    print(json.dumps(out), flush=True)


def reverify_cost(args: argparse.Namespace, workdir: Path, script: Path, miners: int, devices: int,
                  reverify_s: float) -> dict:
    """The verifier's CPU per device at production size (``script --role verify-cost``), and per
    hour at the default schedule."""
    import numpy as np

    from protocol.graval.devices import load_gpu_table
    from protocol.graval.spec import plan, samples_needed
    from validator.graval.session import REVERIFY_FAILURE

    h100 = next(model for model in load_gpu_table() if model.id == "h100")
    prod = plan("GPU-00000000-bench", int(args.prod_memory_gib * (1 << 30)), n=h100.graval_n, b=h100.graval_b)
    again, first = samples_needed(failure=REVERIFY_FAILURE), samples_needed()
    ns = sorted(set(args.verify_n) | {h100.graval_n})
    check = {"n": h100.graval_n, "m": 2, "steps": 4} if args.prod else {"n": args.check_n, "m": args.check_m,
                                                                         "steps": args.check_steps}
    config = {"ns": ns, "samples": {"reverify": again, "first": first}, "repeats": args.verify_repeats,
              "prod_n": h100.graval_n, "prod_m": prod.m, "prod_steps": prod.steps, "check": check,
              "backend": args.prover_backend}
    load = os.getloadavg()[0]
    measured = run_child(script, "verify-cost", write_config(workdir / "verify.json", config))
    load = max(load, os.getloadavg()[0])
    points = measured["points"]
    at_prod = next(point for point in points if point["n"] == h100.graval_n)
    out: dict[str, Any] = {"verify_samples_per_phase": again, "first_samples_per_phase": first, "prod_n": h100.graval_n,
                           "prod_m": prod.m, "prod_steps": prod.steps}
    out["verify_cpu_s_per_device"] = at_prod["reverify_cpu_s"]
    out["verify_cpu_s_per_device_min"] = at_prod["reverify_cpu_s_min"]
    out["first_verify_cpu_s_per_device"] = at_prod["first_cpu_s"]
    out["verify_leaves_per_device"] = at_prod["reverify_leaves"]
    out["openings_wire_mb"] = at_prod["reverify_wire_mb"]
    out["first_openings_wire_mb"] = at_prod["first_wire_mb"]
    if len(points) >= 2:
        slope, intercept = np.polyfit([p["n"] for p in points], [p["reverify_cpu_s"] for p in points], 1)
        out["verify_fit_a_s"], out["verify_fit_b_us_per_n"] = float(intercept), float(slope) * 1e6
    for point in points:
        out[f"verify_cpu_s_at_n{point['n']}"] = point["reverify_cpu_s"]
    out["verify_points"] = points
    checked = measured["check"]
    out.update({"check_n": checked["n"], "check_m": checked["m"], "check_steps": checked["steps"],
                "check_real_cpu_s": checked["real_cpu_s"], "check_exact_cpu_s": checked["exact_cpu_s"],
                "check_exact_over_real": checked["exact_cpu_s"] / checked["real_cpu_s"],
                "check_leaves": [checked["real_leaves"], checked["exact_leaves"]]})
    out["devices_reverified_per_hour"] = miners * devices * 3600.0 / reverify_s
    out["verify_cpu_s_per_hour"] = out["verify_cpu_s_per_device"] * out["devices_reverified_per_hour"]
    out["verify_share_of_core"] = out["verify_cpu_s_per_hour"] / 3600.0
    out["verify_share_of_core_min"] = out["verify_cpu_s_per_device_min"] * out["devices_reverified_per_hour"] / 3600.0
    out["verify_loadavg_1m"] = load  # CPU time per call grows on a busy machine: judge the figures with it
    return out
