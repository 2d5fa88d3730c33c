"""Cohort sampling (`clients-per-round`): seeded, sized for secure aggregation and DP, and only the
cohort's nodes are asked to train and to take part in the round's secure sum."""

import pytest

from fedkd.aggregate import auto_scale, secagg_config
from fedkd.cli import simulate
from fedkd.config import Config, ConfigError
from fedkd.task import dp_params, sample_cohort

SMALL = dict(num_clients=6, clients_per_round=4, rounds=2, local_epochs=2, digest_epochs=1, distill_epochs=5,
             num_public=100, client_cpus=1.0)


# ---- the draw ----------------------------------------------------------------------------------

def test_cohort_is_a_function_of_the_seed_and_the_round():
    cfg = Config(num_clients=1000, clients_per_round=100, aggregation="plain")
    first = [sample_cohort(cfg, r) for r in (1, 2, 3)]
    assert first == [sample_cohort(Config(num_clients=1000, clients_per_round=100, aggregation="plain"), r)
                     for r in (1, 2, 3)]
    assert all(len(c) == 100 == len(set(c)) and list(c) == sorted(c) for c in first)
    assert all(0 <= i < 1000 for c in first for i in c)
    assert len({c for c in first}) == 3  # a fresh draw each round
    assert sample_cohort(cfg.replace(seed=1), 1) != first[0]


def test_without_sampling_every_client_is_in_every_round():
    assert sample_cohort(Config(num_clients=7), 3) == tuple(range(7))
    assert sample_cohort(Config(num_clients=7, clients_per_round=7), 3) == tuple(range(7))


# ---- sizing ------------------------------------------------------------------------------------

def test_secure_aggregation_and_dp_are_sized_for_the_cohort_not_the_federation():
    sampled = Config(num_clients=1000, clients_per_round=100)
    assert auto_scale(sampled, 1.0) == auto_scale(Config(num_clients=100), 1.0)
    assert auto_scale(sampled, 1.0) > auto_scale(Config(num_clients=1000), 1.0)
    k, t, c, m = secagg_config(sampled, 10).session(100, 50)
    assert (k, t, c, m) == (14, 9, 2, 8)  # fedkd.secagg.config's n = 100 figures
    dp = Config(num_clients=1000, clients_per_round=100, dp_clip=1.0, dp_noise_multiplier=1.0,
                dp_max_dropouts=5, dp_colluders=3, public_sample=20)
    params = dp_params(dp, 10, 1)
    assert params.num_clients == 100 and params.min_honest == 100 - 5 - 3


@pytest.mark.parametrize("changes, words", [
    (dict(clients_per_round=11), "clients-per-round=11 must be 0 (every client) or lie in 1..num-clients=10"),
    (dict(clients_per_round=-1), "clients-per-round=-1"),
    (dict(clients_per_round=2), "clients-per-round=2: secure aggregation needs at least secagg-min-clients=3"),
    (dict(clients_per_round=4, secagg_min_clients=5), "clients-per-round=4: secure aggregation needs at least "
                                                      "secagg-min-clients=5"),
    (dict(clients_per_round=4, dp_clip=1.0, dp_noise_multiplier=1.0, dp_max_dropouts=2, dp_colluders=2),
     "must be below clients-per-round=4"),
])
def test_bad_cohort_settings_are_one_line_errors(changes, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")) as info:
        Config(num_clients=10).replace(**changes)
    assert "\n" not in str(info.value)


def test_small_cohorts_are_fine_without_secure_aggregation():
    assert Config(num_clients=10, clients_per_round=1, aggregation="plain").cohort_size == 1


def test_cli_takes_clients_per_round_and_ray_address():
    from fedkd.cli import build_parser, config_from_args

    args = build_parser().parse_args(["run", "--clients", "20", "--clients-per-round", "5",
                                      "--ray-address", "127.0.0.1:6379", "--engine", "ray"])
    cfg = config_from_args(args)
    assert (cfg.clients_per_round, cfg.ray_address, cfg.cohort_size) == (5, "127.0.0.1:6379", 5)


# ---- through Flower ----------------------------------------------------------------------------

class AskedGrid:
    """Wraps the server's Grid; keeps (message type, destination node, group, the clients the
    message is for) of everything it sends."""

    def __init__(self, grid, sent):
        self._grid, self.sent = grid, sent

    def send_and_receive(self, messages, *, timeout=None):
        from fedkd.apps.node import CLIENTS, clients_of

        messages = list(messages)
        self.sent.extend((m.metadata.message_type, m.metadata.dst_node_id, m.metadata.group_id,
                          clients_of(m.content) if CLIENTS in m.content else ()) for m in messages)
        return list(self._grid.send_and_receive(messages, timeout=timeout))

    def __getattr__(self, name):
        return getattr(self._grid, name)


def _asked(sent, kind, server_round):
    return sorted(pid for t, _, group, ids in sent if t.startswith(kind) and group == str(server_round) for pid in ids)


@pytest.mark.parametrize("nodes", [6, 2])  # one client per node; three per node
def test_only_the_cohort_trains_and_joins_the_secure_sum_and_a_dropout_is_survived(tmp_path, nodes):
    cfg = Config(**SMALL, out=str(tmp_path), num_nodes=nodes)
    cohorts = [sample_cohort(cfg, r) for r in (1, 2)]
    dropped = cohorts[1][0]  # a round-2 cohort member fails before its masked input (every round it is in)
    cfg = cfg.replace(drop=f"masked_input:{dropped}")
    sent = []
    results = simulate(cfg, observe_grid=lambda g: AskedGrid(g, sent))
    assert results["status"] == "completed"
    for r, cohort in zip((1, 2), cohorts):
        record = results["rounds"][r - 1]
        assert record["cohort"] == list(cohort)
        assert _asked(sent, "train", r) == list(cohort)  # each cohort client once, no one outside it
        secagg = record["secagg"]
        assert secagg["neighbors"] == 3 and secagg["threshold"] == 2  # k, t of n = 4, not of 6
        assert secagg["survivors"] == [c for c in cohort if c != dropped]
        assert record["contributors"] == len(cohort) - (dropped in cohort)
        # every stage asked only cohort clients, and each node at most once per stage
        stages = [(t, node) for t, node, group, _ in sent if t == "query.secagg" and group == str(r)]
        assert set(_asked(sent, "query.secagg", r)) <= set(cohort)
        assert len(stages) <= 4 * len({pid % nodes for pid in cohort})  # 4 stages after the keys
    assert results["rounds"][1]["secagg"]["dropped"] == {"masked_input": [dropped]}
    # the roll call asked every node once, before round 1
    assert sum(t.endswith("roll_call") for t, _, _, _ in sent) == nodes
    # one train message per node holding a cohort client
    for r, cohort in zip((1, 2), cohorts):
        trains = [node for t, node, group, _ in sent if t == "train" and group == str(r)]
        assert len(trains) == len(set(trains)) == len({pid % nodes for pid in cohort})


def test_fedavg_samples_the_same_cohort(tmp_path):
    cfg = Config(**dict(SMALL, rounds=1), method="fedavg", out=str(tmp_path), num_nodes=3)
    sent = []
    results = simulate(cfg, observe_grid=lambda g: AskedGrid(g, sent))
    cohort = list(sample_cohort(cfg, 1))
    assert results["rounds"][0]["cohort"] == cohort
    assert _asked(sent, "train", 1) == cohort


def test_the_log_shows_a_sampled_cohort_compactly():
    from fedkd.results import cohort_text, round_line
    from fedkd.rounds import RoundRecord

    record = RoundRecord(2, student_accuracy=0.5, ensemble_accuracy=0.6, teacher_accuracy_mean=0.4, seconds=3.0,
                         cohort=tuple(range(0, 1000, 10)))
    assert cohort_text(record, 1000) == "cohort 100/1000: 0,10,20,30,40,50,60,70 ..."
    assert "cohort 100/1000: 0,10," in round_line(record, 1000)
    assert cohort_text(RoundRecord(1, cohort=(0, 1, 2)), 3) == ""  # every client: nothing to say
    assert cohort_text(RoundRecord(1, cohort=(1, 2)), 3) == "cohort 2/3: 1,2"


def test_a_dp_round_is_judged_against_its_cohort_not_the_federation():
    import numpy as np

    from fedkd.aggregate import Aggregate
    from fedkd.server import DistillationServer, PrivacyBudgetError

    cfg = Config(num_clients=12, clients_per_round=5, num_public=100, distill_epochs=1, public_sample=20,
                 dp_clip=1.0, dp_noise_multiplier=1.0, dp_max_dropouts=1)
    server = DistillationServer(cfg)
    dim = dp_params(cfg, 10, 1).dim
    record = {}
    server._release(1, Aggregate(np.zeros(dim), 4, (0, 1, 2, 3)), record)  # 4 of 5: within the one drop-out
    assert record["privacy"]["honest_contributors"] == 4
    with pytest.raises(PrivacyBudgetError, match="only 3 of 5 clients survived") as err:
        server._release(2, Aggregate(np.zeros(dim), 3, (0, 1, 2)), {})
    assert err.value.status == "too-few-survivors"
