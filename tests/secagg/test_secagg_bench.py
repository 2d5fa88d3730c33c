"""`fedkd bench secagg` wiring: a tiny run is exact, bad arguments exit 2 with one line."""

import argparse
import json

from fedkd.bench import secagg as bench


def _parse(argv):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(argv)


def test_small_run_is_exact_and_reports_every_figure():
    # k = 8, t = 6 (c = 2): each neighbourhood survives 2 drop-outs after masked input
    report = bench.run_bench(clients=12, dim=300, dropout=0.17, seed=3)
    assert report["exact"] and report["survivors"] == 10 and report["dropped"] == 2
    assert report["masked_input_expansion_vs_packed"] < 1.1
    for key in ("total_s", "client_mean_s", "server_s", "peak_rss_mib", "mask_expansion_gbps",
                "upload_expansion_vs_float32", "server_per_stage_s", "client_mean_per_stage_s"):
        assert key in report


def test_json_output(capsys):
    assert bench.main(_parse(["--clients", "6", "--dim", "1e2", "--dropout", "0", "--json"])) == 0
    assert json.loads(capsys.readouterr().out)["exact"] is True


def test_bad_arguments_give_one_line_and_exit_code_2(capsys):
    for argv in (["--clients", "1"], ["--dropout", "1.5"], ["--clients", "10", "--neighbors", "3"],
                 ["--clients", "abc"], ["--dropout", "x"], ["--bit-width", "1"], ["--seed", "0.5"]):
        assert bench.main(_parse(argv + ["--dim", "10"])) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("fedkd bench secagg: error:") and "Traceback" not in err
