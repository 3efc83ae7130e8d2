"""The validator benchmark's exact verifier-cost measurement (seam: the CPU the validator
spends re-verifying one production-size device, away from the simulated miners).

A child of the validator benchmark: ``reverify_cost`` (in the parent) starts a fresh process
(``--role verify-cost --config FILE``, ``verify_cost``) and turns its figures into the
per-hour cost at the default schedule:

- ``verify_cpu_s_per_device``: ``time.thread_time`` around everything the validator does
  for one device once its two commitments are in (all in one thread): ``pick_samples``,
  parsing the ``FillCommitment`` and ``AccessCommitment``, ``access_order`` from the access
  seed (one BLAKE2b per step), ``leaves_for``, building the ``Open`` request,
  ``Openings.model_validate_json`` of the wire bytes and ``verify`` (Freivalds checks of
  the leaf digests, the multiproof's node hashes, one dot product per sample), with the
  re-verification sample count ``samples_needed(failure=REVERIFY_FAILURE)`` (137 per
  phase at 1e-2); median of ``--verify-repeats`` (``*_min``: the fastest, what a quiet core
  gives; ``verify_loadavg_1m``: the machine's load meanwhile). The verifier's key
  products (``protocol.graval.verifier.leaf_checker``) are built once per sweep hash key
  and size, shared by every device of the sweep: warm in the timed part, their own cost
  is ``leaf_checker_cpu_s`` (per sweep, not per device).
- ``verify_cpu_s_per_hour`` = that x ``devices_reverified_per_hour`` (miners x devices x
  3600 / reverify_s); ``verify_share_of_core`` = that / 3600.

It is measured directly at PRODUCTION shape: the h100 row's n = 16384 (b = 256) with the
m and steps an 80 GB H100 gets (``prod_m``, ``prod_steps``, at the row's steps per
matrix). m and steps set the trees' depths (log2 n + log2 m for the fill tree, log2 b +
log2 steps for the access tree) and how many opened leaves and multiproof nodes are
distinct; ``short_chain_*`` measures the same at m = 2, 4 steps to show by how much. A
real proof of the production shape takes hours on a CPU, so the rounds are EXACT at the
samples instead (``exact_round``): the samples are drawn with a seeded rng before the
"commitments" are built, every opened row/column carries its true lattice digest and lies
on a multiproof leading to its root (the siblings off the opened paths are random
digests, every node above is the real node hash), every sampled entry is the true product
of its opened inputs (G, X_0 and the noise regenerated from the spec), the rest is
random; the verifier does exactly an honest round's work and must answer ok.
``check_*``: the method against a real honest proof of one shape (``--check-n/m/steps``,
default n = 1024, m = 16, 256 steps; ``--prod``: n = 16384, m = 2, 4 steps, minutes and
~13 GB), interleaved, same samples count; ``check_exact_over_real`` should be ~1.
``verify_cpu_s_at_n*``, ``verify_fit_*``: the same at smaller n (production m and steps),
fitted as a + b n. ``first_verify_cpu_s_per_device``: 410 samples per phase (a device seen
for the first time), for information. ``openings_wire_mb``: the Openings body the
dendrite parses on the event loop per device.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console

from bench.children import run_child, write_config
from bench.report import progress

MIB = 1 << 20


def sparse_tree(leaves: dict[int, Any], depth: int, parents: Any, rng: Any) -> tuple[Any, dict[tuple[int, int], Any]]:
    """(root, nodes) of a lattice Merkle tree of ``depth`` levels of which only ``leaves``
    (position -> digest) are known: every sibling the multiproof needs is a random digest,
    every node above is the real node hash (``parents(left, right)``). The nodes are exactly
    the multiproof an honest prover would send for these leaves."""
    import numpy as np

    from protocol.graval.lattice import K, Q

    known, nodes = dict(leaves), {}
    for level in range(depth):
        for position in sorted(known):
            if position ^ 1 not in known and (level, position ^ 1) not in nodes:
                nodes[(level, position ^ 1)] = rng.integers(0, Q, size=K, dtype=np.int64)
        above = sorted({position >> 1 for position in known})

        def child(position: int) -> Any:
            return known[position] if position in known else nodes[(level, position)]

        computed = parents(np.stack([child(2 * p) for p in above]), np.stack([child(2 * p + 1) for p in above]))
        known = dict(zip(above, computed))
    return known[0], nodes


def exact_round(spec: Any, count: int, seed: int) -> tuple[list, bytes, str, str, str]:
    """(samples, access seed, fill commitment wire, access commitment wire, openings wire) of a
    round whose samples are known in advance (``pick_samples`` with a seeded rng): every
    opened row/column carries its true lattice digest and lies on a multiproof that leads
    to its root, and every sampled entry is the product of its opened inputs, so ``verify``
    does exactly the work of an honest round of this shape and passes; the entries that are
    not sampled and the tree nodes off the opened paths are random (nothing computes them:
    n = 16384 takes seconds, not hours)."""
    import numpy as np

    from protocol.graval import lattice
    from protocol.graval.field import HALF, P, SBOX, hash_residues
    from protocol.graval.spec import access_depth, access_order, fill_depth, leaf_position
    from protocol.graval.synapses import (
        AccessCommitment, FillCommitment, LeafOpening, Openings, TreeNodes, encode_digest,
    )
    from protocol.graval.verifier import leaf_checker, leaves_for, pick_samples

    rng, noise_rng = random.Random(seed), np.random.default_rng(seed)
    n, b = spec.n, spec.b
    access_seed = rng.randbytes(32)
    order = access_order(spec, access_seed)
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
    for sample in sorted((s for s in samples if s.kind == "access"), key=lambda s: s.index):
        t, r, c = sample.index, sample.row, sample.col
        right = leaf("X", t - 1, c) if t > 1 else generated("x0", np.arange(n) * b + c)
        leaf("X", t, c)[r] = entry(leaf("M", order[t - 1], r), right, (f"au{t}", f"av{t}"), r, c)

    refs = leaves_for(spec, order, samples)
    data = np.stack([leaf(ref.kind, ref.index, ref.leaf) for ref in refs])
    limbs = lattice.key_matrix(spec.hash_seed_bytes, n, "leaf").astype(np.float64)
    digests = lattice.combine((data.astype(np.float64) @ limbs).astype(np.int64))  # |sum| < n 2^14: exact
    checker = leaf_checker(spec.hash_seed, n)  # the validator's, cached per sweep key: its node hash
    roots, nodes = {}, []
    for kind, depth in (("M", fill_depth(spec)), ("X", access_depth(spec))):
        at = {leaf_position(spec, ref): digests[k] for k, ref in enumerate(refs) if ref.kind == kind}
        if not at:
            roots[kind] = noise_rng.integers(0, lattice.Q, size=lattice.K, dtype=np.int64)
            continue
        roots[kind], tree_nodes = sparse_tree(at, depth, checker.parents, noise_rng)
        places = list(tree_nodes)
        nodes.append(TreeNodes.pack(kind, [level for level, _ in places], [position for _, position in places],
                                    [tree_nodes[place] for place in places]))
    fill = FillCommitment(challenge_id=spec.challenge_id, fill_root=encode_digest(roots["M"]), backend="exact")
    access = AccessCommitment(challenge_id=spec.challenge_id, access_root=encode_digest(roots["X"]))
    openings = Openings(challenge_id=spec.challenge_id, nodes=nodes,
                        leaves=[LeafOpening.build(ref, data[k].tobytes(), digests[k]) for k, ref in enumerate(refs)])
    return samples, access_seed, fill.model_dump_json(), access.model_dump_json(), openings.model_dump_json()


def validator_cpu(spec: Any, count: int, samples: list, access_seed: bytes, fill_wire: str, access_wire: str,
                  wire: str) -> tuple[float, int]:
    """Thread CPU of what the validator does for one device once its proof is back: pick the
    samples, parse the two commitments, draw the access order from its seed, pick the
    leaves, build the Open request, parse the openings, verify. The verifier's key products
    (``leaf_checker``, once per sweep key) are warm. Returns (seconds, leaves opened);
    raises if the verdict is not ok."""
    from protocol.graval.spec import access_order
    from protocol.graval.synapses import AccessCommitment, FillCommitment, Open, Openings
    from protocol.graval.verifier import leaf_checker, leaves_for, pick_samples, verify

    leaf_checker(spec.hash_seed, spec.n)
    time.sleep(0.02)
    tick = time.thread_time()
    pick_samples(spec, count)  # its cost (a SystemRandom, as in the validator); the planned samples are used
    fill = FillCommitment.model_validate_json(fill_wire)
    access = AccessCommitment.model_validate_json(access_wire)
    order = access_order(spec, access_seed)
    refs = leaves_for(spec, order, samples)
    Open(challenge_id=spec.challenge_id, leaves=refs).to_json()
    verdict = verify(spec, fill, access, order, samples, Openings.model_validate_json(wire))
    cpu = time.thread_time() - tick
    if not verdict.ok:
        raise SystemExit(f"validator bench: the verifier rejected an honest round at n={spec.n}, m={spec.m}, "
                         f"steps={spec.steps}: {verdict.reason}: {verdict.detail}")
    return cpu, len(refs)


def real_round(spec: Any, prover: Any, count: int) -> tuple[list, bytes, str, str, str]:
    """The same from a real proof (``prover`` filled and accessed with ``prover.access_seed``):
    samples picked after both commitments, opened by the prover."""
    from protocol.graval.spec import access_order
    from protocol.graval.verifier import leaves_for, pick_samples

    samples = pick_samples(spec, count)
    refs = leaves_for(spec, access_order(spec, prover.access_seed), samples)
    wire = prover.open(refs).model_dump_json()
    return samples, prover.access_seed, prover.fill_commitment.model_dump_json(), \
        prover.access_commitment.model_dump_json(), wire


def leaf_checker_cost(hash_seed: str, n: int) -> float:
    """Thread CPU of building the verifier's key products for one sweep key at size n (once per sweep)."""
    from protocol.graval import lattice

    tick = time.thread_time()
    lattice.LeafChecker(bytes.fromhex(hash_seed), n)
    return time.thread_time() - tick


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
    sweep = secrets.token_hex(32)  # one hash key for every device of the sweep, as the validator does

    def measure_exact(spec: Any, count: int, seeds: Sequence[int]) -> tuple[float, float, int, float]:
        runs, size = [], 0
        for seed in seeds:
            samples, access_seed, fill_wire, access_wire, wire = exact_round(spec, count, seed)
            runs.append(validator_cpu(spec, count, samples, access_seed, fill_wire, access_wire, wire))
            size = len(wire)
        cpu = [seconds for seconds, _ in runs]
        return statistics.median(cpu), min(cpu), runs[-1][1], size / MIB

    with progress(console) as bar:
        points = [(n, label, count) for n in config["ns"] for label, count in config["samples"].items()
                  if label == "reverify" or n == config["prod_n"]]
        task = bar.add_task("verifier CPU per device (exact rounds, production m and steps)", total=len(points) * repeats)
        for n, label, count in points:
            spec = ChallengeSpec.fresh(uuid, n=n, b=max(8, n // 64), m=m, steps=steps, hash_seed=sweep)
            seeds = [bar.update(task, advance=1) or 1000 * n + k for k in range(repeats)]
            cpu, fastest, leaves, size = measure_exact(spec, count, seeds)
            entry = next((p for p in out["points"] if p["n"] == n), None)
            if entry is None:
                entry = {"n": n, "leaf_checker_cpu_s": leaf_checker_cost(sweep, n)}
                out["points"].append(entry)
            entry.update({f"{label}_cpu_s": cpu, f"{label}_cpu_s_min": fastest, f"{label}_leaves": leaves,
                          f"{label}_wire_mb": size})
        # The claim that the cost hardly depends on m and steps: a short chain at production n.
        short = ChallengeSpec.fresh(uuid, n=config["prod_n"], b=max(8, config["prod_n"] // 64), m=2, steps=4, hash_seed=sweep)
        cpu, fastest, leaves, size = measure_exact(short, config["samples"]["reverify"], [77 + k for k in range(repeats)])
        out["short_chain"] = {"n": short.n, "m": 2, "steps": 4, "reverify_cpu_s": cpu, "reverify_leaves": leaves}

    # Cross-check of the method: a real honest proof and exact rounds of the same shape.
    check = config["check"]
    spec = ChallengeSpec.fresh(uuid, n=check["n"], b=max(8, check["n"] // 64), m=check["m"], steps=check["steps"],
                               hash_seed=sweep)
    backend = pick_backend(config["backend"])
    with progress(console) as bar:
        task = bar.add_task(f"cross-check: real proof n={spec.n} m={spec.m} steps={spec.steps} on {backend.name}",
                            total=spec.m + spec.steps)
        prover = Prover(spec, backend, progress=lambda phase, done, total: bar.update(
            task, completed=done if phase == "fill" else spec.m + done))
        prover.access_seed = secrets.token_bytes(32)
        prover.fill_commitment = prover.fill()
        prover.access_commitment = prover.access(prover.access_seed)
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
    prod = plan("GPU-00000000-bench", int(args.prod_memory_gib * (1 << 30)), n=h100.graval_n, b=h100.graval_b,
                steps_per_matrix=h100.graval_steps_per_matrix)
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
    out["leaf_checker_cpu_s"] = at_prod.get("leaf_checker_cpu_s")
    short = measured.get("short_chain")
    if short:
        out["short_chain_m"], out["short_chain_steps"] = short["m"], short["steps"]
        out["short_chain_verify_cpu_s"] = short["reverify_cpu_s"]
        out["short_chain_leaves"] = short["reverify_leaves"]
        out["short_over_production"] = short["reverify_cpu_s"] / at_prod["reverify_cpu_s"]
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
