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
    "cohort_engine": COHORT_ENGINES,
}

HELP: dict[str, str] = {
    # ---- what runs
    "method": "fd (federated distillation with the secure sum), fedavg (FedAvg on the student "
              "architecture, the same partitions), central (the student on the union of the private data: "
              "an upper bound) or local (each client's teacher alone)",
    "rounds": "federated rounds, >= 1",
    "seed": "seeds the partitions, the public and test splits, the models, the cohorts and the views; the same "
            "seed on CPU gives the same results, on either engine and however the clients are spread over "
            "nodes, as long as torch runs with the same number of threads (it changes float rounding)",
    "out": "output folder for config.json, results.json, rounds.csv, summary.csv, student.pt, curves.png and .pdf, "
           "summary.txt and run.log (docs/usage.md); a path ending in "
           "/latest makes a new DIR/<date-time> folder per run and points DIR/latest at it; any other folder "
           "that already holds a run is refused without --force",
    # ---- data
    "dataset": "digits (scikit-learn's, embedded: nothing is downloaded); mnist, fashion-mnist or cifar10 (files "
               "in data-dir); a .npz (x/y, or Keras x_train/y_train/x_test/y_test), a .parquet file or folder, a "
               "save_to_disk folder, an image folder root/<class>/<image>, or hf:NAME[?image=COL&label=COL] "
               "(docs/data.md). User images become channels first; values all in 0..255 are divided by 255 and "
               "standardised per channel with public-set statistics, values in [0, 1] are standardised, "
               "anything else is used as given",
    "data_dir": "folder holding the mnist, fashion-mnist or cifar10 files (empty: ./data); unused by digits "
                "and by file or folder datasets",
    "download": "let torchvision (not a dependency of fedkd) fetch mnist, fashion-mnist or cifar10 into data-dir "
                "when the files are missing; off: a missing file is an error that says where to put it",
    "num_clients": "clients (private partitions), >= 2; with flwr run it must equal the number of SuperNodes",
    "clients_per_round": "cross-device rounds: a cohort of this many clients drawn each round from the seed "
                         "and the round number (0: every client); 1..num-clients, and at least "
                         "secagg-min-clients under secure aggregation. Secure aggregation and DP noise are sized "
                         "for the cohort; no privacy amplification by sampling is claimed (docs/privacy.md)",
    "partition": "how the private pool is split over clients: iid, dirichlet (label skew, set by alpha) or "
                 "pathological (classes-per-client classes each)",
    "alpha": "Dirichlet concentration for partition dirichlet, > 0 (smaller: more skewed)",
    "classes_per_client": "classes each client holds under partition pathological, >= 1",
    "num_public": "unlabelled public examples (the transfer set), held out of the private pool, >= 1",
    "test_fraction": "share of the data held out as the test set, in (0, 1); used only where the data has no "
                     "test split of its own (digits, most user inputs)",
    "public_labels": "declare that the server may read the public set's labels (off: it never does); needed "
                     "by hard-label-weight",
    # ---- models
    "teacher_models": "the teachers' architecture: auto, mlp, cnn or resnet8, or a comma list of them cycled "
                      "over clients (mlp,cnn: even clients mlp, odd clients cnn); auto picks by input shape: mlp "
                      "for feature vectors and images under 16x16, cnn for other greyscale images, resnet8 for "
                      "colour images of 32x32 and more",
    "student_model": "the server's student: auto, mlp, cnn or resnet8 (auto as for teacher-models)",
    # ---- client (teacher) training
    "local_epochs": "epochs of local training per round (SGD, momentum 0.9), >= 0; also FedAvg's and the "
                    "central baseline's epochs per round",
    "lr": "learning rate of local training (teachers, FedAvg, central), > 0",
    "batch_size": "local training batch size, >= 1",
    "clip_norm": "max L2 norm of each local SGD step's gradient (teachers, FedAvg, central), >= 0; 0: off. "
                 "DP-SGD teachers clip per example instead (teacher-dp-max-grad-norm)",
    "digest_epochs": "FedMD/DS-FL digest: epochs a teacher that keeps its own weights (teacher-init persist, or "
                     "an architecture without a student of its own) first distils last round's consensus, with "
                     "distill-optimizer and distill-lr, >= 0 (0: off)",
    "consensus_weight": "w in CE(private batch) + w * T^2 KL(last round's consensus || teacher) on an equal batch "
                        "of public inputs in every local step (joint training, Cronus); >= 0, 0: off; -1: auto, "
                        "1, or 0 with DP-SGD teachers",
    "teacher_init": "where each round's teacher starts: student (the global student, sent down; teachers of "
                    "another architecture start from that architecture's student, see architecture-students) or "
                    "persist (its own weights from the last round)",
    "architecture_students": "with teacher-init student, the server also distils one student per teacher "
                             "architecture unlike the student's (FedDF) and those teachers start from it; off: "
                             "they keep their own weights and digest the consensus",
    # ---- knowledge transfer
    "temperature": "softmax temperature T of the released predictions and of the distillation loss, > 0",
    "ensemble": "how the clients' predictions are combined: mean (of probabilities), geometric (mean of "
                "log-probabilities), logits (mean of logits; the student regresses them) or dsfl (the mean "
                "sharpened by DS-FL's entropy reduction at era-temperature)",
    "era_temperature": "temperature of DS-FL's entropy reduction (ensemble dsfl), in (0, 1): it sharpens",
    "server_step": "the student's target from round 2 on: softmax(log p_student + step * (log p_ensemble - "
                   "log p_student)) at the teachers' temperature (1 for dsfl); 1: the ensemble itself, > 1 steps "
                   "past it; -1: auto, 1.5 under ensemble mean with every client in every round and no DP of either "
                   "kind, else 1. Set by hand, it is refused under distributed DP and with ensemble logits",
    "vote_weighting": "per-class weighted mean, both sums secure: seen-classes (a class's probability is the "
                      "mean over the clients that hold it), class-share (weights K times the client's share of "
                      "the class) or none; auto: seen-classes, or none with either kind of DP, with "
                      "confidence-weighting or with ensemble geometric or logits",
    "confidence_weighting": "per-example weighted mean instead: none, max-prob (top probability at T = 1) or "
                            "entropy (1 - normalised entropy); needs ensemble mean or dsfl and vote-weighting auto or none",
    "public_sample": "public examples released per round, 0..num-public (0: all of them); each brings "
                     "1 + public-views rows of soft labels",
    "public_views": "augmented views (shifts, mirror images) of each public example that the teachers also "
                    "label; 0: off, a count > 0 needs image inputs; -1: auto, 3 on images of at least 16x16 pixels, "
                    "else 0, and 0 under distributed DP",
    "view_flip": "views are also mirrored left-right at random; turn off for images whose mirror is another "
                 "class (digits, text)",
    # ---- secure aggregation
    "aggregation": "secagg (the server sees only the masked sum of the clients' vectors) or plain (it sees "
                   "every vector; the same fixed-point sum, for comparison and speed)",
    "secagg_clip": "fixed-point clip range of the secure sum, >= 0; 0: auto, 1 for probabilities, K with "
                   "vote-weighting class-share, 30 for log-probabilities (geometric), 50 for logits",
    "secagg_scale": "fixed-point steps per unit, >= 0; 0: auto, the finest power of two that fits the cohort's "
                    "sum in the ring, at most 2^24. A summed value is off by at most n / (2 * scale)",
    "secagg_bit_width": "bits b of the ring Z_2^b of the secure sum, 2..64; 0: auto, 24 without DP and 32 "
                        "with distributed DP",
    "secagg_neighbors": "k, the neighbours each client masks and shares with, >= 0; 0: auto, 2*ceil(log2 n) "
                        "capped at n-1 (SecAgg+); n-1 is classic SecAgg",
    "secagg_threshold": "t, the shares needed to reconstruct a client's secret, >= 0; 0: auto, "
                        "floor((k + c) / 2) + 1",
    "secagg_max_colluders": "c, clients that may collude with a malicious server, >= 0; -1: auto, 2 for "
                            "n >= 10, else 0",
    "secagg_min_clients": "a client refuses sessions of fewer clients, >= 3; a SuperNode's own --node-config "
                          "pins its minimum, which the run config may raise but never lower",
    "secagg_consistency_check": "clients sign the survivor and drop-out lists (Ed25519) before unmasking; "
                                "off is refused by nodes whose own settings do not allow it (fedkd run's "
                                "simulated nodes take theirs from the run)",
    "secagg_timeout": "seconds to wait for each secure-aggregation stage's replies, > 0 (the keys come back "
                      "with training, under timeout)",
    "drop": "experiments and tests: 'stage:id,id;stage:id' makes those clients fail at that secure-aggregation "
            f"stage ({', '.join(SECAGG_STAGES)}); needs aggregation secagg; empty: nobody drops",
    # ---- distributed DP inside the secure sum
    "dp_clip": "distributed DP: L2 bound of a client's centred soft labels per round, >= 0; 0: DP off, > 0 "
               "turns it on (method fd, aggregation secagg)",
    "dp_noise_multiplier": "distributed DP: noise std in the sum divided by the rounded L2 sensitivity, >= 0 "
                           "(0 with dp-target-epsilon, which chooses it)",
    "dp_delta": "delta at which epsilon is reported, in (0, 1)",
    "dp_epsilon_budget": "stop before a round could take epsilon past this, >= 0 (0: no budget)",
    "dp_target_epsilon": "choose the noise multiplier so that all rounds together spend this epsilon, >= 0 "
                         "(0: use dp-noise-multiplier)",
    "dp_mechanism": "the noise of distributed DP: ddg (distributed discrete Gaussian, exact sampler) or skellam",
    "dp_granularity_bits": "g, 0..20: the clip norm spans 2^g integer steps",
    "dp_max_dropouts": "noise shares are sized so the target noise survives this many drop-outs, >= 0",
    "dp_colluders": "noise shares are sized so the target noise survives this many clients colluding with the "
                    "server (their noise is known), >= 0",
    # ---- DP-SGD teachers
    "teacher_dp_noise_multiplier": "DP-SGD teachers (Opacus, pip install \"fedkd[dpsgd]\"; mlp or cnn): noise "
                                   "std / max-grad-norm, >= 0; 0: plain SGD",
    "teacher_dp_max_grad_norm": "DP-SGD teachers: per-example gradient clip, > 0",
    "teacher_dp_delta": "DP-SGD teachers: delta at which each client's epsilon is reported, in (0, 1)",
    # ---- server (student) distillation
    "distill_epochs": "the server's distillation epochs per round, >= 1 (early-stopped by patience)",
    "distill_lr": "learning rate of the server's distillation and of the clients' digest step, > 0",
    "distill_optimizer": "optimizer of the server's distillation and of the digest step: adam or sgd "
                         "(momentum 0.9, weight decay 5e-4)",
    "distill_batch_size": "batch size of the server's distillation, >= 1",
    "patience": "early-stopping patience in epochs on the public validation slice, >= 1",
    "val_fraction": "share of the released public examples held out to stop distillation early, in [0, 1) "
                    "(no early stop when the slice would hold under 10 examples)",
    "hard_label_weight": "weight of a cross-entropy term on public labels in the server's distillation, >= 0 "
                         "(0: off; > 0 needs public-labels)",
    # ---- runtime
    "device": "where torch runs: auto (cuda when torch sees a GPU, else cpu), cpu or cuda",
    "cohort_engine": "how a node trains its clients' teachers: stacked (the clients of one architecture as one "
                     "vmapped model, in chunks that fit memory; the same results as sequential within float "
                     "rounding), sequential (one after another), or auto (stacked where it applies and pays: "
                     "DP-SGD teachers, batch norm (resnet8) and a lone client of an architecture run sequentially "
                     "under either; auto also runs convolutions (cnn) sequentially on a CPU, where grouped "
                     "convolutions are slower); sequential is the default: its results are bit for bit the same "
                     "whichever clients share a node",
    "client_cpus": "CPU cores a simulated node takes, > 0: Ray reserves them per node, and its torch threads "
                   "(both engines) follow them",
    "server_threads": "torch threads of the server's distillation and evaluation, >= 0 (0: torch's default, one "
                      "per core; the default 1 avoids idle threads spinning on cores that other work holds)",
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
    "teacher_memory": "MiB of teacher weights a node keeps in memory between rounds (teacher-init persist, or a "
                      "teacher no global student fits), >= 0; each teacher past it is kept in a file of its own "
                      "on the node's disk (0600, removed when the node's process ends), so memory stays flat in "
                      "the clients a node hosts; 0: every kept teacher on disk",
    "teacher_dir": "the folder for teachers kept on a node's disk (teacher-memory); empty: the system's "
                   "temporary folder",
}


def missing_help(names: list[str]) -> list[str]:
    """The field names in `names` that have no help text (a field added to Config without one)."""
    return [name for name in names if not HELP.get(name, "").strip()]
