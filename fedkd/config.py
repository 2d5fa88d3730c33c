"""One frozen run configuration for fedkd, built from Flower's run config.

Owns: the `Config` dataclass, its defaults (mirrored in pyproject's `[tool.flwr.app.config]`),
the mapping between flat hyphenated run-config keys and fields, and validation with one-line errors.
Must not touch: data, models or Flower messaging; it only describes a run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

from fedkd.data import DATASETS, PARTITIONS  # owned by the data package (numpy only, no torch)
from fedkd.data.source import names_an_input
from fedkd.data.views import shiftable
from fedkd.errors import ConfigError, require_clients

METHODS = ("fd", "fedavg", "central", "local")
MODELS = ("auto", "mlp", "cnn", "resnet8")  # fedkd.models implements each; "auto" picks by input shape
ENSEMBLE_RULES = ("mean", "geometric", "logits", "dsfl")
AGGREGATIONS = ("secagg", "plain")
SECAGG_STAGES = ("advertise_keys", "share_keys", "masked_input", "consistency_check", "unmask")
VOTE_WEIGHTINGS = ("auto", "none", "class-share", "seen-classes")
CONFIDENCE_WEIGHTINGS = ("none", "max-prob", "entropy")
TEACHER_INITS = ("persist", "student")
DP_MECHANISMS = ("ddg", "skellam")
DEVICES = ("auto", "cpu", "cuda")
ENGINES = ("inprocess", "ray")  # fedkd run's simulation engines (fedkd.simulation)
COHORT_ENGINES = ("auto", "stacked", "sequential")  # how a node trains its clients' teachers (fedkd.stacked)
# public-views auto: views per public example on images of 16x16 and more; each view is one more row
# of soft labels per client per round
AUTO_VIEWS = 3
OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class Config:
    # What runs
    method: str = "fd"
    rounds: int = 5
    seed: int = 0
    out: str = "runs/latest"
    # Data
    dataset: str = "digits"  # a built-in, .npz/.parquet, a dataset or image folder, or hf:NAME (docs/data.md)
    data_dir: str = ""
    download: bool = False
    num_clients: int = 10
    # Cross-device rounds: a seeded cohort of this many clients per round (0: every client). The
    # server picks and sees the cohort, so no privacy amplification by sampling is claimed (docs/privacy.md)
    clients_per_round: int = 0
    partition: str = "dirichlet"
    alpha: float = 0.5
    classes_per_client: int = 2
    num_public: int = 500
    test_fraction: float = 0.2
    public_labels: bool = False  # declare public labels available to the server (off: it never reads them)
    # Models
    teacher_models: str = "auto"  # comma list, cycled over clients: "mlp,cnn"
    student_model: str = "auto"
    # Client (teacher) training
    local_epochs: int = 20
    lr: float = 0.05
    batch_size: int = 32
    # max L2 norm of each local SGD step's gradient (0: off): teachers, FedAvg and central (DP-SGD
    # teachers clip per example instead, teacher-dp-max-grad-norm). Teachers started from the student
    # at lr 0.05 collapsed without it (fashion3615 alpha 0.1 seed 0, round 2: ensemble 0.444; 0.786 with it)
    clip_norm: float = 5.0
    digest_epochs: int = 3  # FedMD/DS-FL digest: epochs on last round's consensus before local training
    # weight of KD on last round's consensus (public inputs) in every local batch, joint with the
    # private cross-entropy (Cronus); -1: auto, 1 (0 with DP-SGD teachers, whose steps are Opacus's)
    consensus_weight: float = -1.0
    teacher_init: str = "student"  # each round's teacher starts from the global student (sent down); "persist": its own
    # FedDF's per-architecture students: with teacher-init student, the server also distils one student
    # of each teacher architecture unlike the student's, and those teachers start from it (sent down).
    # Off: they keep their own weights and digest the consensus
    architecture_students: bool = True
    # Knowledge transfer
    temperature: float = 3.0
    ensemble: str = "mean"
    era_temperature: float = 0.1  # DS-FL entropy-reduction sharpening (rule "dsfl"), must be < 1
    # the server's step in function space from the student's predictions towards the ensemble's
    # (distill.extrapolate): 1 distils the ensemble itself; > 1 steps past it (FedExP-like), from round 2;
    # -1: auto, 1.5 under the mean rule, every client each round, no DP of either kind; else 1
    server_step: float = -1.0
    # per-class weighted mean (task.class_weights): "seen-classes", "class-share" or "none";
    # auto: seen-classes, or none with either kind of DP (the weights come from raw label counts)
    vote_weighting: str = "auto"
    confidence_weighting: str = "none"  # "max-prob" or "entropy": per-example weighted mean (distill.confidence)
    public_sample: int = 0  # public examples released per round (0: the whole public set)
    # augmented views of each public example that the teachers also label (fedkd.data.views); -1:
    # auto, 3 for images of at least 16x16 pixels, else 0, and 0 under distributed DP (views_for)
    public_views: int = -1
    view_flip: bool = True  # views are also mirrored left-right at random (off for text-like images)
    aggregation: str = "secagg"  # "secagg": the server sees only the masked sum; "plain": every vector
    secagg_clip: float = 0.0  # fixed-point clip range; 0: chosen from the ensemble rule (see apps.secure)
    secagg_scale: float = 0.0  # fixed-point steps per unit; 0: the finest that fits (<= 2^24). Error <= n / (2 * scale)
    # ring Z_2^b of the secure sum; 0: 24 bits without DP (n clients' probabilities at a scale of at
    # least 2^8 for n <= 10^4, a quarter less upload than 32), 32 bits with DP (noise needs the room)
    secagg_bit_width: int = 0
    secagg_neighbors: int = 0  # k; 0: 2*ceil(log2 n) capped at n-1 (SecAgg+); n-1: classic SecAgg
    secagg_threshold: int = 0  # t; 0: floor((k + c) / 2) + 1
    secagg_max_colluders: int = -1  # c, clients that may collude with a malicious server; -1: 2 for n >= 10
    secagg_min_clients: int = 3  # a client refuses smaller sessions (a node's --node-config may raise it)
    secagg_consistency_check: bool = True  # clients sign the survivor and drop-out lists (Ed25519)
    secagg_timeout: float = 120.0  # seconds to wait for each stage's replies (the keys come with training: `timeout`)
    drop: str = ""  # experiments: "stage:id,id;stage:id" makes those clients fail at that stage
    # Distributed differential privacy inside the secure sum (see fedkd.privacy); dp_clip > 0 turns it on
    dp_clip: float = 0.0  # L2 bound c on a client's centred soft labels for one round (0: DP off)
    dp_noise_multiplier: float = 0.0  # z: noise std in the sum = z * the (rounded) sensitivity
    dp_delta: float = 1e-5
    dp_epsilon_budget: float = 0.0  # stop before a round could take epsilon past this (0: no budget)
    dp_target_epsilon: float = 0.0  # > 0: choose z so that all rounds together spend this (instead of dp-noise-multiplier)
    dp_mechanism: str = "ddg"  # "ddg" (distributed discrete Gaussian) or "skellam"
    dp_granularity_bits: int = 10  # c / gamma = 2^g integer steps across the clip norm
    dp_max_dropouts: int = 0  # noise shares are sized so the target noise survives this many drop-outs
    dp_colluders: int = 0  # ... and this many clients colluding with the server (their noise is known)
    # DP-SGD teachers through Opacus (see fedkd.privacy.dpsgd): record-level, local; > 0 turns it on
    teacher_dp_noise_multiplier: float = 0.0  # sigma of DP-SGD (noise std / max-grad-norm); 0: plain SGD
    teacher_dp_max_grad_norm: float = 1.0  # per-example gradient clip
    teacher_dp_delta: float = 1e-5  # each client's epsilon is reported at this delta
    # Server (student) distillation
    distill_epochs: int = 60
    # Adam at 3e-3, measured against SGD (momentum 0.9) at 0.05, 0.0167 and Adam at 1e-3 and 3e-4,
    # distilling round-1 ensembles into a fresh student (simulations/distill_optimizers.md): SGD at
    # 0.05 left the 28x28 CNN student at chance (0.104) and SGD's best rate differs by data set;
    # Adam 3e-3 was best or within 0.01 of it on digits, 28x28 grey and 32x32 colour, in fewer
    # epochs. The digest step uses the same two settings (it optimises the same loss).
    distill_lr: float = 0.003
    distill_optimizer: str = "adam"  # or "sgd" (momentum 0.9, weight decay 5e-4): fedkd.distill.make_optimizer
    distill_batch_size: int = 64
    patience: int = 20  # early-stopping patience, in epochs, on the public validation slice
    val_fraction: float = 0.1
    hard_label_weight: float = 0.0  # weight of cross-entropy on public labels (needs public_labels)
    # Runtime
    device: str = "auto"
    # how a node trains the teachers of the clients it hosts: stacked (one batched model per
    # architecture, fedkd.stacked), sequential (one client after another), or auto (stacked where
    # it applies and pays: no DP-SGD, no batch norm, two or more clients of one architecture, and
    # on a CPU no convolutions). Sequential by default: stacked results equal it only within float
    # rounding, and depend (as rounding) on which clients share a node, where sequential ones are
    # bit for bit the same on every engine and grouping (tests/test_engine.py)
    cohort_engine: str = "sequential"
    client_cpus: float = 1.0
    client_gpus: float = 0.0
    # torch threads of the server's own work (distillation, evaluation); 0: torch's default, one per core.
    # 1: OpenMP threads beyond the free cores spin; on 2 busy cores one fashion3615 distillation took 53
    # CPU s on 1 thread and had not finished after 526 on 2 (docs/results.md, "The server's distillation")
    server_threads: int = 1
    timeout: float = 600.0  # seconds to wait for nodes and for each round's replies
    ray_address: str = ""  # fedkd run: attach the simulation to this Ray cluster ("" starts a local one)
    # fedkd run's engine: inprocess (the apps called directly in this process) or ray (Flower's
    # simulation engine, workers on several cores or a cluster); flwr run and fedkd deploy ignore it
    engine: str = "inprocess"
    # nodes (workers) the clients are spread over, each hosting a fixed disjoint set of partition
    # ids; 0: auto, one node per client under flwr run and fedkd deploy (a SuperNode is an
    # organisation), and under fedkd run one per core the engine uses (fedkd.simulation)
    num_nodes: int = 0
    # MiB of teacher weights a node keeps in memory between rounds (teacher-init persist, or a
    # teacher no global student fits); each teacher past it goes to a file on the node's disk
    # (fedkd.apps.teachers), so a node's memory stays flat in the clients it hosts
    teacher_memory: float = 1024.0
    teacher_dir: str = ""  # the folder for those files; "": the system's temporary folder

    # ---- conversion -------------------------------------------------------------------------
    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> "Config":
        """Build from flat hyphenated keys (Flower's run config); unknown keys are an error."""
        by_key = {f.name.replace("_", "-"): f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in run_config.items():
            f = by_key.get(key)
            if f is None:
                raise ConfigError(f"unknown setting '{key}'; valid settings: {', '.join(sorted(by_key))}")
            values[f.name] = _coerce(key, raw, type(getattr(cls(), f.name)))
        return cls(**values).validated()

    def to_run_config(self) -> dict[str, Any]:
        """Flat hyphenated keys with scalar values, fit for a Flower ConfigRecord or config.json."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes).validated()

    @property
    def teacher_model_list(self) -> tuple[str, ...]:
        return tuple(m.strip() for m in self.teacher_models.split(",") if m.strip())

    @property
    def drop_plan(self) -> dict[str, frozenset[int]]:
        """`drop` parsed: secure-aggregation stage -> client (partition) ids that fail there."""
        plan: dict[str, frozenset[int]] = {}
        for part in filter(None, (p.strip() for p in self.drop.split(";"))):
            stage, _, ids = part.partition(":")
            stage = stage.strip()
            if stage not in SECAGG_STAGES:
                raise ConfigError(f"drop stage '{stage}' is unknown; choose one of {', '.join(SECAGG_STAGES)} "
                                  "(format 'stage:id,id;stage:id')")
            try:
                members = frozenset(int(i) for i in ids.split(",") if i.strip())
            except ValueError:
                raise ConfigError(f"drop '{part}': client ids must be integers (format 'stage:id,id')") from None
            bad = [i for i in members if not 0 <= i < self.num_clients]
            if bad:
                raise ConfigError(f"drop '{part}': client ids must lie in 0..{self.num_clients - 1}")
            plan[stage] = plan.get(stage, frozenset()) | members
        if plan and self.aggregation != "secagg":
            raise ConfigError("drop simulates secure-aggregation drop-outs; it needs aggregation=secagg")
        return plan

    def views_for(self, input_shape: tuple[int, ...]) -> int:
        """public-views resolved for inputs of `input_shape`: auto is AUTO_VIEWS for images of at
        least 16x16 pixels, else 0 (a shift moves too much of a small image; feature vectors have no
        pixels to shift), and 0 under distributed DP (the shape is not read then): the clip bounds
        the L2 norm of a client's whole release, so every view spreads the same clip over more
        coordinates and each soft label carries more relative noise. An explicit count needs images."""
        if self.public_views == -1:
            return 0 if self.dp_enabled or not shiftable(tuple(input_shape)) else AUTO_VIEWS
        if self.public_views > 0 and len(input_shape) != 3:
            raise ConfigError(f"public-views={self.public_views} needs image inputs (C, H, W); this data's "
                              f"inputs have shape {tuple(input_shape)}: use public-views 0")
        return self.public_views

    @property
    def vote_rule(self) -> str:
        """vote-weighting resolved: auto is seen-classes, or none when either kind of DP is on."""
        if self.vote_weighting != "auto":
            return self.vote_weighting
        return "none" if self.dp_enabled or self.teacher_dp_enabled or self.confidence_weighting != "none" \
            or self.ensemble not in ("mean", "dsfl") else "seen-classes"

    @property
    def joint_weight(self) -> float:
        """consensus-weight resolved: auto is 1, or 0 with DP-SGD teachers."""
        if self.consensus_weight >= 0:
            return self.consensus_weight
        return 0.0 if self.teacher_dp_enabled else 1.0

    @property
    def step(self) -> float:
        """server-step resolved: auto is 1.5 under the mean rule with every client in every round and
        neither kind of DP, else 1 (a step past a noise-flattened ensemble, past DS-FL's sharpened
        one or past one drawn from a changing cohort is not measured)."""
        if self.server_step != -1:
            return self.server_step
        full = self.clients_per_round in (0, self.num_clients)
        return 1.5 if self.ensemble == "mean" and full and not (self.dp_enabled or self.teacher_dp_enabled) else 1.0

    @property
    def ring_bits(self) -> int:
        """secagg-bit-width resolved: as set, or 24 without DP and 32 with it."""
        return self.secagg_bit_width or (32 if self.dp_enabled else 24)

    @property
    def cohort_size(self) -> int:
        """n of every round: the clients asked to take part (and the size secure aggregation and
        the DP noise shares are set up for)."""
        return self.clients_per_round or self.num_clients

    @property
    def dp_min_survivors(self) -> int:
        """The fewest clients whose noise shares a DP round's sum may hold: the cohort less
        dp-max-dropouts. A sum of fewer is discarded (its noise would be too small)."""
        return self.cohort_size - self.dp_max_dropouts

    def dp_honest(self, survivors: int) -> int:
        """The honest noise shares in a DP sum of `survivors` clients: less dp-colluders, whose
        shares the server may know. The one formula the noise sizing and the accounting share."""
        return survivors - self.dp_colluders

    @property
    def dp_min_honest(self) -> int:
        """The fewest honest noise shares in a DP sum, which the noise is sized for."""
        return self.dp_honest(self.dp_min_survivors)

    @property
    def _round_size_setting(self) -> str:
        """The setting that fixes a round's n, as an error names it."""
        if self.clients_per_round:
            return f"clients-per-round={self.clients_per_round}"
        return f"num-clients={self.num_clients}"

    @property
    def dp_enabled(self) -> bool:
        return self.dp_clip > 0

    @property
    def teacher_dp_enabled(self) -> bool:
        return self.teacher_dp_noise_multiplier > 0

    def teacher_model_for(self, partition_id: int) -> str:
        models = self.teacher_model_list
        return models[partition_id % len(models)]

    # ---- validation -------------------------------------------------------------------------
    def validated(self) -> "Config":
        """This config, or ConfigError naming the first bad key. The checks run by topic: values
        that must be finite, the data, how predictions are combined, the models, sizes and rates,
        secure aggregation, then distributed DP and DP-SGD teachers."""
        self._validate_finite()
        self._validate_data()
        self._validate_ensemble()
        self._validate_models()
        self._validate_sizes()
        self._validate_secagg()
        self._validate_dp()
        self._validate_teacher_dp()
        return self

    def _validate_finite(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name.replace('_', '-')}={value} must be a finite number")

    def _validate_data(self) -> None:
        _choice("method", self.method, METHODS)
        _choice("partition", self.partition, PARTITIONS)
        # a user's input is read and checked by fedkd.data; here only whether the string can name one
        if self.dataset not in DATASETS and not names_an_input(self.dataset):
            raise ConfigError(
                f"dataset '{self.dataset}' is unknown; choose one of {', '.join(DATASETS)}, a .npz or .parquet file, "
                "a save_to_disk or image folder, or hf:NAME"
            )

    def _validate_ensemble(self) -> None:
        _choice("ensemble", self.ensemble, ENSEMBLE_RULES)
        _choice("aggregation", self.aggregation, AGGREGATIONS)
        _choice("vote-weighting", self.vote_weighting, VOTE_WEIGHTINGS)
        if self.vote_weighting not in ("none", "auto") and self.ensemble not in ("mean", "dsfl"):
            raise ConfigError(
                f"vote-weighting '{self.vote_weighting}' works with ensemble mean or dsfl, not '{self.ensemble}'"
            )
        _choice("confidence-weighting", self.confidence_weighting, CONFIDENCE_WEIGHTINGS)
        if self.confidence_weighting != "none" and self.ensemble not in ("mean", "dsfl"):
            raise ConfigError(f"confidence-weighting '{self.confidence_weighting}' works with ensemble mean or dsfl, "
                              f"not '{self.ensemble}'")
        if self.confidence_weighting != "none" and self.vote_weighting not in ("none", "auto"):
            raise ConfigError("choose one of vote-weighting (per class) and confidence-weighting (per example), "
                              "not both")
        _choice("teacher-init", self.teacher_init, TEACHER_INITS)
        if self.consensus_weight < 0 and self.consensus_weight != -1:
            raise ConfigError(f"consensus-weight={self.consensus_weight} must be >= 0, or -1 (automatic)")
        if self.consensus_weight > 0 and self.teacher_dp_enabled:
            raise ConfigError("consensus-weight > 0 mixes public batches into local training, which DP-SGD teachers "
                              "(teacher-dp-noise-multiplier) do not support; use consensus-weight 0 or -1 (auto)")

    def _validate_models(self) -> None:
        _choice("device", self.device, DEVICES)
        _choice("cohort-engine", self.cohort_engine, COHORT_ENGINES)
        _choice("distill-optimizer", self.distill_optimizer, OPTIMIZERS)
        _choice("student-model", self.student_model, MODELS)
        if not self.teacher_model_list:
            raise ConfigError("teacher-models is empty; give one or more of " + ", ".join(MODELS))
        for m in self.teacher_model_list:
            _choice("teacher-models", m, MODELS)

    def _validate_sizes(self) -> None:
        _at_least("rounds", self.rounds, 1)
        require_clients("num-clients", self.num_clients)
        _at_least("num-public", self.num_public, 1)
        if not 0 <= self.clients_per_round <= self.num_clients:
            raise ConfigError(f"clients-per-round={self.clients_per_round} must be 0 (every client) or lie in "
                              f"1..num-clients={self.num_clients}")
        _at_least("local-epochs", self.local_epochs, 0)
        _at_least("clip-norm", self.clip_norm, 0)
        _at_least("digest-epochs", self.digest_epochs, 0)
        _at_least("distill-epochs", self.distill_epochs, 1)
        _at_least("batch-size", self.batch_size, 1)
        _at_least("distill-batch-size", self.distill_batch_size, 1)
        _at_least("patience", self.patience, 1)
        _at_least("classes-per-client", self.classes_per_client, 1)
        _at_least("public-sample", self.public_sample, 0)
        if self.public_views < -1:
            raise ConfigError(f"public-views={self.public_views} must be -1 (auto), 0 (off) or a count of views")
        if self.public_sample > self.num_public:
            raise ConfigError(
                f"public-sample={self.public_sample} is larger than num-public={self.num_public}; "
                f"use 0 (all) or a value in 1..{self.num_public}"
            )
        _positive("alpha", self.alpha)
        _positive("temperature", self.temperature)
        _positive("lr", self.lr)
        _positive("distill-lr", self.distill_lr)
        _positive("client-cpus", self.client_cpus)
        _at_least("server-threads", self.server_threads, 0)
        _choice("engine", self.engine, ENGINES)
        if self.teacher_memory < 0:
            raise ConfigError(f"teacher-memory={self.teacher_memory:g} must be >= 0 (MiB; 0 keeps every teacher on disk)")
        if self.ray_address and self.engine != "ray":
            raise ConfigError(f"ray-address={self.ray_address} attaches Ray's engine to a cluster; add engine ray "
                              f"(--engine ray), or drop ray-address to run in this process")
        if not 0 <= self.num_nodes <= self.num_clients:
            raise ConfigError(f"num-nodes={self.num_nodes} must be 0 (auto) or 1..num-clients={self.num_clients}")
        _positive("timeout", self.timeout)
        _positive("secagg-timeout", self.secagg_timeout)
        if not (self.server_step > 0 or self.server_step == -1):
            raise ConfigError(f"server-step={self.server_step:g} must be > 0, or -1 (automatic)")
        if self.step != 1 and self.dp_enabled:
            raise ConfigError(f"server-step={self.server_step:g} is not measured under distributed DP: where noise "
                              f"flattens the ensemble, a step past it reverses the student's own ranking; use "
                              f"server-step 1 with dp-clip")
        if self.step != 1 and self.ensemble == "logits":
            raise ConfigError(f"server-step={self.server_step:g} steps between probabilities; the logits rule has "
                              f"none: use ensemble mean, geometric or dsfl, or server-step 1")
        if not 0 < self.era_temperature < 1:
            raise ConfigError(f"era-temperature={self.era_temperature} must lie in (0, 1) (it sharpens)")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"test-fraction={self.test_fraction} must lie in (0, 1)")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"val-fraction={self.val_fraction} must lie in [0, 1)")
        if self.client_gpus < 0:
            raise ConfigError(f"client-gpus={self.client_gpus} must be >= 0")
        if self.hard_label_weight < 0:
            raise ConfigError(f"hard-label-weight={self.hard_label_weight} must be >= 0")
        if self.hard_label_weight > 0 and not self.public_labels:
            raise ConfigError(
                f"hard-label-weight={self.hard_label_weight} needs public-labels=true "
                "(the server reads public labels only when they are declared available)"
            )

    def _validate_secagg(self) -> None:
        if self.secagg_scale < 0:
            raise ConfigError(f"secagg-scale={self.secagg_scale} must be >= 0 (0: automatic)")
        if self.secagg_clip < 0:
            raise ConfigError(f"secagg-clip={self.secagg_clip} must be >= 0 (0: automatic)")
        if self.secagg_bit_width != 0 and not 2 <= self.secagg_bit_width <= 64:
            raise ConfigError(f"secagg-bit-width={self.secagg_bit_width} must be 0 (automatic) or lie in 2..64")
        _at_least("secagg-neighbors", self.secagg_neighbors, 0)
        _at_least("secagg-threshold", self.secagg_threshold, 0)
        _at_least("secagg-max-colluders", self.secagg_max_colluders, -1)
        _at_least("secagg-min-clients", self.secagg_min_clients, 3)
        if self.method == "fd" and self.aggregation == "secagg" and self.cohort_size < self.secagg_min_clients:
            raise ConfigError(
                f"{self._round_size_setting}: secure aggregation needs at least secagg-min-clients="
                f"{self.secagg_min_clients} clients per round (with 2, one of them run by the server would hold the "
                "other's secrets); add clients or use aggregation=plain")
        self.drop_plan  # parses, or raises ConfigError

    def _validate_teacher_dp(self) -> None:
        if self.teacher_dp_noise_multiplier < 0:
            raise ConfigError(f"teacher-dp-noise-multiplier={self.teacher_dp_noise_multiplier} must be >= 0 (0: off)")
        _positive("teacher-dp-max-grad-norm", self.teacher_dp_max_grad_norm)
        if not 0 < self.teacher_dp_delta < 1:
            raise ConfigError(f"teacher-dp-delta={self.teacher_dp_delta} must lie in (0, 1)")
        if self.teacher_dp_enabled and self.method not in ("fd", "local"):
            raise ConfigError(f"teacher-dp-noise-multiplier trains fd or local teachers, not method '{self.method}'")
        if self.teacher_dp_enabled and self.vote_weighting not in ("none", "auto"):
            raise ConfigError(f"vote-weighting '{self.vote_weighting}' scales uploads by raw label counts, outside "
                              "DP-SGD's guarantee; use vote-weighting none with teacher-dp-noise-multiplier")

    def _validate_dp(self) -> None:
        _choice("dp-mechanism", self.dp_mechanism, DP_MECHANISMS)
        if self.dp_clip < 0:
            raise ConfigError(f"dp-clip={self.dp_clip} must be >= 0 (0: differential privacy off)")
        if self.dp_noise_multiplier < 0:
            raise ConfigError(f"dp-noise-multiplier={self.dp_noise_multiplier} must be >= 0")
        if not 0 < self.dp_delta < 1:
            raise ConfigError(f"dp-delta={self.dp_delta} must lie in (0, 1)")
        if self.dp_epsilon_budget < 0:
            raise ConfigError(f"dp-epsilon-budget={self.dp_epsilon_budget} must be >= 0 (0: no budget)")
        if not 0 <= self.dp_granularity_bits <= 20:
            raise ConfigError(f"dp-granularity-bits={self.dp_granularity_bits} must lie in 0..20")
        _at_least("dp-max-dropouts", self.dp_max_dropouts, 0)
        _at_least("dp-colluders", self.dp_colluders, 0)
        if self.dp_target_epsilon < 0:
            raise ConfigError(f"dp-target-epsilon={self.dp_target_epsilon} must be >= 0 (0: use dp-noise-multiplier)")
        if self.dp_target_epsilon > 0 and self.dp_noise_multiplier > 0:
            raise ConfigError("give dp-target-epsilon or dp-noise-multiplier, not both (the target sets the multiplier)")
        dp_settings = (self.dp_noise_multiplier > 0 or self.dp_epsilon_budget > 0 or self.dp_target_epsilon > 0
                       or self.dp_max_dropouts > 0 or self.dp_colluders > 0)
        if not self.dp_enabled:
            if dp_settings:
                raise ConfigError("differential-privacy settings are given but dp-clip is 0 (off); "
                                  "set dp-clip > 0, the L2 bound of a client's soft labels")
            return
        if self.method != "fd":
            raise ConfigError(f"dp-clip applies to method fd (it noises the released soft labels), not '{self.method}'")
        if self.aggregation != "secagg":
            raise ConfigError("distributed DP needs aggregation=secagg: each client adds only a share of the "
                              "noise, which protects nothing if the server sees the shares one by one")
        if self.ensemble not in ("mean", "dsfl") or self.vote_rule != "none" or self.confidence_weighting != "none":
            raise ConfigError("distributed DP works on softened probabilities: use ensemble mean or dsfl "
                              "with vote-weighting none and confidence-weighting none")
        if self.dp_min_honest < 1:
            raise ConfigError(f"dp-max-dropouts + dp-colluders = {self.dp_max_dropouts + self.dp_colluders} "
                              f"must be below {self._round_size_setting} (someone's noise must remain)")
        if self.dp_epsilon_budget > 0 and self.dp_noise_multiplier == 0 and self.dp_target_epsilon == 0:
            raise ConfigError("dp-epsilon-budget needs dp-noise-multiplier > 0 (without noise epsilon is infinite)")


def _choice(key: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{key} '{value}' is unknown; choose one of {', '.join(valid)}")


def _at_least(key: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{key}={value} is too small; it must be >= {low}")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key}={value} must be > 0")


def _coerce(key: str, raw: Any, kind: type) -> Any:
    """Turn a run-config value (TOML scalar or CLI string) into the field's type."""
    try:
        if kind is bool:
            if isinstance(raw, str):
                if raw.lower() in ("true", "1", "yes"):
                    return True
                if raw.lower() in ("false", "0", "no"):
                    return False
                raise ValueError
            return bool(raw)
        if kind is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            return int(raw)
        if kind is float:
            return float(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={raw!r} is not a valid {kind.__name__}") from None
