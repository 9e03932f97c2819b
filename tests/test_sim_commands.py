"""``p2pgan cuts`` and ``p2pgan whatif`` from the command line."""

from __future__ import annotations

import csv
import time

import pytest

from p2pgan.cli import main
from p2pgan.errors import ConfigError
from p2pgan.sim.study import parse_cut, parse_vary


def scenario(tmp_path, repo_root, clients=(40, 40), cuts="search: exact", topology="paper-edge"):
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: latency\n"
        f"domains: {{mnist: {clients[0]}, fashion-mnist: {clients[1]}}}\n"
        "training: {batch_size: 64}\n"
        f"cuts: {{{cuts}}}\n"
        f"topology: {repo_root / 'topologies' / (topology + '.yaml')}\n")
    return path


def test_cuts_prints_plan_per_profile_and_reference_policies(tmp_path, repo_root, capsys):
    out_json = tmp_path / "cuts.json"
    assert main(["cuts", str(scenario(tmp_path, repo_root)), "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    for word in ("device1", "device7", "(0,0,0,0)", "exact search", "all-offload", "all-local", "full-model",
                 "SimPy", "analytic", "seconds per iteration"):
        assert word in text, word
    import json

    data = json.loads(out_json.read_text())
    prices = {row["plan"]: row for row in data["prices"]}
    assert set(prices) == {"exact search", "all-offload", "all-local", "full-model"}
    best = prices["exact search"]["sim_s_per_iter"]
    assert all(best <= row["sim_s_per_iter"] for row in prices.values())
    assert prices["exact search"]["analytic_s_per_iter"] == pytest.approx(best, rel=1e-9)
    assert len(data["plan"]) == 80


def test_cuts_with_a_fixed_plan_and_ga(tmp_path, repo_root, capsys):
    path = scenario(tmp_path, repo_root, clients=(3, 3), cuts="fixed: [0, 1, 1, 0]")
    assert main(["cuts", str(path)]) == 0
    text = capsys.readouterr().out
    assert "scenario plan" in text and "(0,1,1,0)" in text and "exact search" in text
    assert main(["cuts", str(path), "--method", "ga", "--generations", "3", "--population", "20"]) == 0
    assert "ga search" in capsys.readouterr().out


def test_whatif_writes_csv_and_plot_and_prices_1000_clients_in_seconds(tmp_path, repo_root, capsys):
    out = tmp_path / "wi"
    path = scenario(tmp_path, repo_root, cuts="policy: all-offload")
    started = time.perf_counter()
    code = main(["whatif", str(path), "--vary", "clients=10,1000", "--vary", "links.*.up_bps=50 Mbit/s,1 Gbit/s",
                 "--out", str(out)])
    elapsed = time.perf_counter() - started
    assert code == 0
    assert elapsed < 60  # ~5 s on an idle 2-core machine, model profiling included
    rows = list(csv.DictReader((out / "whatif.csv").open()))
    assert len(rows) == 4 and (out / "whatif.png").stat().st_size > 1000
    by = {(r["clients"], r["links.*.up_bps"]): float(r["sim_s_per_iter"]) for r in rows}
    assert by[("1000", "50 Mbit/s")] > by[("1000", "1 Gbit/s")]
    assert by[("1000", "50 Mbit/s")] > by[("10", "50 Mbit/s")]
    for r in rows:  # no shared capacity on paper-edge: the two models agree
        assert float(r["analytic_s_per_iter"]) == pytest.approx(float(r["sim_s_per_iter"]), rel=1e-9)
    assert "what-if" in capsys.readouterr().out


def test_whatif_over_cut_policies_and_a_device_clock(tmp_path, repo_root):
    out = tmp_path / "wi"
    path = scenario(tmp_path, repo_root, clients=(4, 4), topology="edge-cloud")
    assert main(["whatif", str(path), "--vary", "cuts=exact,all-offload,full-model,0110",
                 "--vary", "server.clock_hz=0.7 GHz,1.4 GHz", "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "whatif.csv").open()))
    assert {r["plan"] for r in rows} == {"exact search", "all-offload", "full-model", "fixed (0,1,1,0)"}
    for clock in ("0.7 GHz", "1.4 GHz"):
        mine = {r["plan"]: float(r["sim_s_per_iter"]) for r in rows if r["server.clock_hz"] == clock}
        # The search minimises the analytic model; here shared segments add queueing on top.
        exact_analytic = [float(r["analytic_s_per_iter"]) for r in rows
                          if r["server.clock_hz"] == clock and r["plan"] == "exact search"][0]
        # full-model is no cut (every block on the client), so it is outside the search space.
        assert all(exact_analytic <= float(r["analytic_s_per_iter"]) * (1 + 1e-12)
                   for r in rows if r["server.clock_hz"] == clock and r["plan"] != "full-model")
        assert all(v > 0 for v in mine.values())


@pytest.mark.parametrize("argv, words", [
    (["--vary", "clients"], "expected KEY=V1,V2"),
    (["--vary", "clients=0"], "positive whole number"),
    (["--vary", "server.clock_hz=-1"], "server.clock_hz"),
    (["--vary", "cuts=sideways"], "unknown plan"),
])
def test_whatif_user_errors_are_one_line(tmp_path, repo_root, capsys, argv, words):
    path = scenario(tmp_path, repo_root, clients=(2, 2))
    code = main(["whatif", str(path), "--out", str(tmp_path / "wi"), *argv])
    err = capsys.readouterr().err
    assert code in (1, 2)
    assert err.count("\n") == 1 and words in err and "Traceback" not in err


def test_parsers():
    assert parse_cut("0110") == parse_cut("(0,1,1,0)") == parse_cut("0, 1, 1, 0")
    assert parse_cut("exact") is None
    vary = parse_vary("links.*.up_bps=1e9, 2e9")  # values read as --set reads them; the text kept for tables
    assert (vary.key, vary.texts, vary.values) == ("links.*.up_bps", ("1e9", "2e9"), (1e9, 2e9))
    assert parse_vary("clients=10,20").values == (10, 20)
    with pytest.raises(ConfigError):
        parse_vary("=3")


def test_scenario_cuts_search_goes_through_the_engines_resolver(tmp_path, repo_root):
    """``cuts: {search: exact}`` in a scenario gives the run loop the exact plan."""
    from p2pgan.config import load_scenario
    from p2pgan.run.prepare import scenario_cuts
    from p2pgan.model.costs import profile_model
    from p2pgan.sim.pricing import client_ids_for
    from p2pgan.sim.search import search_cuts
    from p2pgan.topology.profiles import load_topology

    loaded = load_scenario(scenario(tmp_path, repo_root, clients=(5, 5)))
    costs = profile_model(loaded.model.to_spec(), batch=2)
    ids = client_ids_for(10)
    topology = load_topology(loaded.topology)
    expected = search_cuts("exact", ids, costs, 64, topology, topology.assign_profiles(ids), 0)
    assert scenario_cuts(loaded, ids, costs) == expected
