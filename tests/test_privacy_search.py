"""A privacy-budgeted cut search in a scenario: measured leakage (cached) rules cuts out."""

from __future__ import annotations

import json

import pytest

from p2pgan.config import load_scenario
from p2pgan.errors import ConfigError
from p2pgan.model.segments import all_cut_options
from p2pgan.run.leakage import leakage_cache_key, measured_leakage
from p2pgan.run.prepare import prepare_run

TINY_AUDIT = ("privacy={samples: 16, aux_samples: 32, decoder_epochs: 1, probe_epochs: 1, dcor_samples: 8,"
              " png_samples: 1}")


def scenario(repo_root, tmp_path, *extra):
    return load_scenario(repo_root / "scenarios" / "quick.yaml", [
        "topology=../topologies/paper-edge.yaml", f"metrics.cache_dir={tmp_path / 'cache'}",
        f"output.dir={tmp_path / 'run'}", TINY_AUDIT, *extra])


def test_the_search_respects_the_budget_over_a_cached_leakage_table(repo_root, tmp_path):
    free = scenario(repo_root, tmp_path, "cuts={search: exact}")
    bounded = scenario(repo_root, tmp_path, "cuts={search: exact, privacy: {max_ssim: 0.5}}")
    # A leakage table as the audit writes it: offloading D's head block (d_head = 0) leaks most.
    table = {"".join(map(str, c.as_tuple())): {"ssim": 0.8 if c.d_head == 0 else 0.4, "label_accuracy": 1.0}
             for c in all_cut_options()}
    cache = tmp_path / "cache" / "leakage"
    cache.mkdir(parents=True)
    (cache / f"{leakage_cache_key(bounded)}.json").write_text(json.dumps(table))
    unconstrained = {c.cut for c in prepare_run(free).plan.clients}
    constrained = {c.cut for c in prepare_run(bounded).plan.clients}
    assert any(cut.d_head == 0 for cut in unconstrained), "the budget must bind for the test to mean anything"
    assert constrained and all(cut.d_head == 1 for cut in constrained)


def test_leakage_is_measured_once_then_read_from_the_cache(repo_root, tmp_path):
    bounded = scenario(repo_root, tmp_path, "cuts={search: exact, privacy: {max_label_accuracy: 0.9}}",
                       "domains={mnist: 2}")
    first = measured_leakage(bounded)
    assert set(first) == set(all_cut_options())
    assert all(0.0 <= leak.label_accuracy <= 1.0 for leak in first.values())
    cached = list((tmp_path / "cache" / "leakage").glob("*.json"))
    assert len(cached) == 1
    assert measured_leakage(bounded) == first


def test_a_budget_without_a_search_is_refused(repo_root, tmp_path):
    with pytest.raises(ConfigError, match=r"cuts\.privacy"):
        scenario(repo_root, tmp_path, "cuts={policy: mixed, privacy: {max_ssim: 0.5}}")
    with pytest.raises(ConfigError, match=r"cuts\.privacy\.max_ssim"):
        scenario(repo_root, tmp_path, "cuts={search: exact, privacy: {max_ssim: 2}}")
