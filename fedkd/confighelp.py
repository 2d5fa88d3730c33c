"""What every run setting means, in one place: the help text of each `Config` field.

Owns: `HELP` (field name -> one paragraph that says what the setting does, its choices or range,
and what its automatic value, 0 or -1, means) and `CHOICES` (field name -> the values it accepts,
taken from the constants `fedkd.config` validates against). `fedkd run --help` and the generated
docs/configuration.md (`python -m fedkd.configdoc`) both read them; tests check that every field
has a text and that every choice is named in it.
Must not touch: defaults or validation (`fedkd.config` owns both; defaults are read from `Config`
wherever they are shown) and argument parsing (`fedkd.cli`).
No `%` in the texts: argparse formats help strings with it.
"""

from __future__ import annotations

from fedkd.config import (AGGREGATIONS, COHORT_ENGINES, CONFIDENCE_WEIGHTINGS, DEVICES, DP_MECHANISMS, ENGINES,
                          ENSEMBLE_RULES, METHODS, MODELS, OPTIMIZERS, SECAGG_STAGES, TEACHER_INITS, VOTE_WEIGHTINGS)
from fedkd.data import DATASETS, PARTITIONS

# The settings that take one of a fixed list of words (teacher-models: a comma list of them).
CHOICES: dict[str, tuple[str, ...]] = {
    "method": METHODS, "dataset": DATASETS, "partition": PARTITIONS, "teacher_models": MODELS,
    "student_model": MODELS, "teacher_init": TEACHER_INITS, "ensemble": ENSEMBLE_RULES,
    "vote_weighting": VOTE_WEIGHTINGS, "confidence_weighting": CONFIDENCE_WEIGHTINGS, "aggregation": AGGREGATIONS,
    "dp_mechanism": DP_MECHANISMS, "distill_optimizer": OPTIMIZERS, "device": DEVICES, "engine": ENGINES,
    "cohort_engine": "how a node trains its clients' teachers: stacked (the clients of one architecture as one "
                     "vmapped model, in chunks that fit memory; the same results as sequential within float "
                     "rounding), sequential (one after another), or auto (stacked where it applies and pays: "
                     "DP-SGD teachers, batch norm (resnet8) and a lone client of an architecture run sequentially "
                     "under either; auto also runs convolutions (cnn) sequentially on a CPU, where grouped "
                     "convolutions are slower)",
    "client_cpus": "CPU cores a simulated node takes, > 0: Ray reserves them per node, and its torch threads "
                   "(both engines) follow them",
    "client_gpus": "share of a GPU Ray reserves per simulated node, >= 0 (0: none)",
    "timeout": "seconds to wait for nodes and for each round's replies, > 0",
    "ray_address": "fedkd run with engine ray only: attach the simulation to this running Ray cluster "
                   "(HOST:PORT of its head, or auto); empty: start a local one",
    "engine": "fedkd run's simulation engine: inprocess (the ServerApp and ClientApp called directly in this "
              "process, no Ray; the default) or ray (Flower's simulation engine: nodes in parallel on several "
              "cores, or a cluster with ray-address); the same seed gives the same rounds on either; flwr run "
              "and fedkd deploy ignore it",
    "num_nodes": "nodes the clients are spread over, each hosting a fixed disjoint set of clients (node i of N "
                 "hosts every N-th partition id from i); 0: auto, one node under the inprocess engine, one per "
                 "core's share (client-cpus) under ray, and one client per SuperNode under flwr run and fedkd "
                 "deploy (num-clients SuperNodes); a node sees the data of every client it hosts",
}


def missing_help(names: list[str]) -> list[str]:
    """The field names in `names` that have no help text (a field added to Config without one)."""
    return [name for name in names if not HELP.get(name, "").strip()]
