"""`fedkd bench secagg`: time one in-memory secure-aggregation round and print its costs.

Owns: the benchmark scenario (a fraction of clients drops after sharing keys and before
sending masked input, the case in which survivors reveal pairwise seeds for the server to
remove), with the protocol's defaults (consistency check on, c colluders tolerated), its
measurements, and their human (rich table) and --json output. It is a command, not a test.

Memory: client vectors are made on demand from (seed, client id) and folded into a running
plain sum for the exactness check, so neither the bench nor the server holds n vectors.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Iterator, Mapping

import numpy as np

from fedkd.errors import require_clients
from fedkd.secagg import MASKED_INPUT, STAGES, SecAggConfig, run_in_memory
from fedkd.secagg.crypto import expand_mask
from fedkd.secagg.quantize import packed_size, ring_dtype


class _OnDemandVectors(Mapping):
    """client id -> (dim,) float32 in [-1, 1), generated when read; keeps the plain integer sum
    of everything read and the time spent making it (not protocol time)."""

    def __init__(self, ids: list[int], dim: int, seed: int, config: SecAggConfig) -> None:
        self._ids, self._dim, self._seed, self._codec = ids, dim, seed, config.fixed_point
        self.plain_sum = np.zeros(dim, dtype=ring_dtype(config.bit_width))  # wraps like the ring
        self.seconds = 0.0

    def __getitem__(self, cid: int) -> np.ndarray:
        began = time.perf_counter()
        vector = np.random.default_rng([self._seed, cid]).uniform(-1, 1, self._dim).astype(np.float32)
        self.plain_sum += self._codec.encode(vector)[0]
        self.seconds += time.perf_counter() - began
        return vector

    def __iter__(self) -> Iterator[int]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


def mask_expansion_rate(dim: int, bit_width: int = 32, repeats: int = 20) -> float:
    """GB/s of mask expansion (AES-256-CTR keystream viewed as ring words) on one core."""
    dtype = ring_dtype(bit_width)
    seed = bytes(range(32))
    expand_mask(seed, dim, dtype)  # warm-up
    began = time.perf_counter()
    for _ in range(repeats):
        expand_mask(seed, dim, dtype)
    return repeats * dim * dtype.itemsize / (time.perf_counter() - began) / 1e9


def run_bench(
    clients: int,
    dim: int,
    dropout: float,
    neighbors: int | None = None,
    seed: int = 0,
    threshold: int | None = None,
    bit_width: int = 32,
    consistency_check: bool = True,
    max_colluders: int | None = None,
    dp_noise_multiplier: float = 0.0,
    dp_mechanism: str = "ddg",
) -> dict:
    """Run one round of `clients` clients with `dim`-long vectors, `dropout` of them silent at
    the masked-input stage; return the measurements as a flat JSON-ready dict. With
    `dp_noise_multiplier` > 0, also time one client's DP encoding (`dp_overhead`)."""
    if not isinstance(clients, int):
        raise ValueError(f"--clients must be an integer >= 2, got {clients!r}")
    require_clients("--clients", clients)
    if not (isinstance(dim, int) and dim >= 1):
        raise ValueError(f"--dim must be an integer >= 1, got {dim!r}")
    if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
        raise ValueError(f"--dropout must be a fraction in [0, 1), got {dropout!r}")
    if not (isinstance(dp_noise_multiplier, (int, float)) and 0 <= dp_noise_multiplier < 1e4):
        raise ValueError(f"--dp-noise-multiplier must be a number in [0, 1e4), got {dp_noise_multiplier!r}")
    config = SecAggConfig(neighbors=neighbors, threshold=threshold, bit_width=bit_width,
                          consistency_check=consistency_check, max_colluders=max_colluders)
    ids = list(range(clients))
    config.resolve(clients, dim)  # ValueError for parameters that do not fit, before any work
    n_drop = round(dropout * clients)
    gone = set(np.random.default_rng(seed).choice(clients, n_drop, replace=False).tolist())
    vectors = _OnDemandVectors(ids, dim, seed, config)

    stage_seconds: dict[str, list[float]] = {}  # stage -> one entry per client that ran it
    client_seconds = dict.fromkeys(ids, 0.0)
    upload = dict.fromkeys(ids, 0)
    masked_bytes = 0

    def observe(stage: str, cid: int, seconds: float, nbytes: int) -> None:
        nonlocal masked_bytes
        stage_seconds.setdefault(stage, []).append(seconds)
        client_seconds[cid] += seconds
        upload[cid] += nbytes
        if stage == MASKED_INPUT:
            masked_bytes = nbytes

    began = time.perf_counter()
    result = run_in_memory(vectors, config, session_id=f"bench/{seed}".encode(), drop={MASKED_INPUT: gone},
                           dim=dim, observer=observe)
    wall = time.perf_counter() - began

    k, t, c, m = config.session(clients, dim)
    packed = packed_size(dim, bit_width)
    mean_upload = sum(upload[c] for c in result.survivors) / result.count  # clients that sent everything
    stages = [s for s in STAGES if s in result.seconds_per_stage]
    exact = bool(np.array_equal(result.integer_sum, vectors.plain_sum & ring_dtype(bit_width).type((1 << bit_width) - 1)))
    return {
        "clients": clients,
        "dim": dim,
        "dropout": dropout,
        "neighbors": k,
        "threshold": t,
        "colluders": c,
        "min_partners": m,
        "consistency_check": consistency_check,
        "bit_width": bit_width,
        "dropped": n_drop,
        "survivors": result.count,
        "total_s": wall - vectors.seconds,  # protocol only: input generation and reference sum excluded
        "wall_s": wall,
        # means over the clients that ran: all stages for survivors, each stage for its runners
        "client_mean_s": sum(client_seconds[c] for c in result.survivors) / result.count,
        "client_mean_per_stage_s": {s: sum(v) / len(v) for s, v in stage_seconds.items()},
        "server_s": sum(result.seconds_per_stage.values()),
        "server_per_stage_s": {s: result.seconds_per_stage[s] for s in stages},
        "upload_bytes_per_client": mean_upload,
        "masked_input_bytes": masked_bytes,
        "upload_expansion_vs_float32": mean_upload / (4 * dim),
        "upload_expansion_vs_packed": mean_upload / packed,
        "masked_input_expansion_vs_packed": masked_bytes / packed,
        "mask_expansion_gbps": mask_expansion_rate(dim, bit_width),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "exact": exact,
        **(dp_overhead(clients, dim, dp_noise_multiplier, dp_mechanism, bit_width, seed) if dp_noise_multiplier > 0 else {}),
    }


def dp_overhead(clients: int, dim: int, noise_multiplier: float, mechanism: str, bit_width: int, seed: int,
                repeats: int = 5) -> dict:
    """Median seconds of one client's DP encoding (`fedkd.privacy.mechanism.encode`: clip, scale,
    round, add its noise share) of a (dim/10, 10) soft-label matrix, and of the noise alone; noise
    shares sized for all `clients` honest, clip 1, 10 granularity bits."""
    from fedkd.privacy.mechanism import DPParams, encode

    classes = 10
    rows = max(1, dim // classes)
    params = DPParams(mechanism=mechanism, clip=1.0, noise_multiplier=noise_multiplier, granularity_bits=10,
                      dim=rows * classes, num_classes=classes, num_clients=clients, min_honest=clients,
                      bit_width=bit_width, wrap_probability=1e-9)
    rng = np.random.default_rng([seed, 1])
    probs = rng.dirichlet(np.ones(classes), size=rows)  # (rows, K)
    encode(probs, params, rng)  # warm-up
    total, noise = [], []
    for _ in range(repeats):
        began = time.perf_counter()
        noise.append(encode(probs, params, rng).noise_seconds)
        total.append(time.perf_counter() - began)
    return {"dp_mechanism": mechanism, "dp_noise_multiplier": noise_multiplier, "dp_dim": rows * classes,
            "dp_encode_s": float(np.median(total)), "dp_noise_s": float(np.median(noise)),
            "dp_client_std": float(np.sqrt(params.client_variance))}


# --- command line --------------------------------------------------------------------------


def _count(name: str, value: object) -> int:
    """A whole number given as an int or as text such as "1e5"."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"--{name} expects a whole number, got {value!r}") from None
    if not number.is_integer():
        raise ValueError(f"--{name} expects a whole number, got {value!r}")
    return int(number)


def _fraction(name: str, value: object) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"--{name} expects a number, got {value!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Values stay text here and are checked in main(), so a bad one is a single error line.
    parser.add_argument("--clients", default=100, help="number of clients (default 100)")
    parser.add_argument("--dim", default=100_000, help="vector length, e.g. 1e5 (default 1e5)")
    parser.add_argument("--dropout", default=0.1, help="fraction dropping before masked input (default 0.1)")
    parser.add_argument("--neighbors", default=None,
                        help="neighbours per client, k (default 2*ceil(log2 n); n-1 = classic SecAgg)")
    parser.add_argument("--threshold", default=None, help="shares needed, t (default (k+c)//2+1)")
    parser.add_argument("--max-colluders", default=None,
                        help="colluders tolerated, c (default 2 for n >= 10, 0 below)")
    parser.add_argument("--bit-width", default=32, help="ring Z_2^b (default 32)")
    parser.add_argument("--no-consistency-check", dest="consistency_check", action="store_false",
                        help="skip the signed consistency check (on by default)")
    parser.add_argument("--seed", default=0, help="seed of inputs and drop-outs (default 0)")
    parser.add_argument("--dp-noise-multiplier", default=0.0,
                        help="also time a client's distributed-DP encoding with this z (default 0: off)")
    parser.add_argument("--dp-mechanism", default="ddg", choices=["ddg", "skellam"], help="(default ddg)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def main(args: argparse.Namespace) -> int:
    try:
        optional = {name: None if getattr(args, name) is None else _count(name.replace("_", "-"), getattr(args, name))
                    for name in ("neighbors", "threshold", "max_colluders")}
        report = run_bench(
            _count("clients", args.clients), _count("dim", args.dim), _fraction("dropout", args.dropout),
            seed=_count("seed", args.seed), bit_width=_count("bit-width", args.bit_width),
            consistency_check=args.consistency_check, dp_noise_multiplier=_fraction("dp-noise-multiplier",
                                                                                   args.dp_noise_multiplier),
            dp_mechanism=args.dp_mechanism, **optional,
        )
    except ValueError as err:
        sys.stderr.write(f"fedkd bench secagg: error: {err}\n")
        return 2
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        _print_table(report)
    return 0 if report["exact"] else 1


def _print_table(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    title = (f"SecAgg+ in memory: {r['clients']} clients, dim {r['dim']:,}, {r['dropped']} dropped before "
             f"masked input, k={r['neighbors']}, t={r['threshold']}, c={r['colluders']}, m={r['min_partners']}, "
             f"check {'on' if r['consistency_check'] else 'off'}, b={r['bit_width']}")
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("total wall (protocol)", f"{r['total_s']:.3f} s"),
        ("wall incl. input generation", f"{r['wall_s']:.3f} s"),
        ("client compute, mean (survivor)", f"{r['client_mean_s'] * 1e3:.2f} ms"),
        *((f"  client: {s}", f"{v * 1e3:.2f} ms") for s, v in r["client_mean_per_stage_s"].items()),
        ("server compute", f"{r['server_s']:.3f} s"),
        *((f"  server: {s}", f"{v * 1e3:.1f} ms") for s, v in r["server_per_stage_s"].items()),
        ("upload per surviving client", f"{r['upload_bytes_per_client'] / 1e3:,.1f} kB"),
        ("  expansion vs float32", f"{r['upload_expansion_vs_float32']:.3f}x"),
        ("  expansion vs packed b-bit", f"{r['upload_expansion_vs_packed']:.3f}x"),
        ("mask expansion (1 core)", f"{r['mask_expansion_gbps']:.2f} GB/s"),
        ("peak RSS", f"{r['peak_rss_mib']:.0f} MiB"),
        ("exact (integer sum)", "yes" if r["exact"] else "NO"),
    ]
    if "dp_encode_s" in r:
        rows += [
            (f"DP encode per client ({r['dp_mechanism']}, z={r['dp_noise_multiplier']:g})", f"{r['dp_encode_s'] * 1e3:.2f} ms"),
            ("  of which noise", f"{r['dp_noise_s'] * 1e3:.2f} ms"),
            ("  noise / client secagg compute", f"{r['dp_noise_s'] / r['client_mean_s']:.1%}"),
        ]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="fedkd bench secagg", description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
