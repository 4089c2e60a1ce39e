"""Configuration precedence and start-up errors that say what to fix."""

from pathlib import Path

import pytest

from edx_live.cli import main
from edx_live.config import ConfigError, load_settings

REPO = Path(__file__).resolve().parents[1]


def test_defaults_env_file_cli_precedence(tmp_path, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[refit]\ninterval_s = 3.0\n[accumulate]\nspatial_bin = 4\n")
    monkeypatch.setenv("EDX_LIVE_REFIT__INTERVAL_S", "7")
    monkeypatch.setenv("EDX_LIVE_OUTPUT__STATUS_INTERVAL_S", "0.25")
    s = load_settings(cfg, {"accumulate": {"spatial_bin": 1}})
    assert s.refit.interval_s == 3.0          # file beats environment
    assert s.output.status_interval_s == 0.25  # environment beats default
    assert s.accumulate.spatial_bin == 1       # command line beats file
    assert s.refit.workflows == ["pca-gmm", "umap-hdbscan"]  # default


def test_example_configuration_is_valid():
    s = load_settings(REPO / "deploy" / "edx-live.toml")
    assert s.quantify.kfactors == {"Fe_Ka": 1.450226, "Pt_La": 5.075602}
    assert s.input.binds and s.log_format == "json"


@pytest.mark.parametrize("text, needle", [
    ("[refit]\ninterval_s = -1\n", "refit.interval_s"),
    ("[refit]\nintervall_s = 2\n", "refit.intervall_s"),
    ("[input]\nsocket = 'dealer'\n", "input.socket"),
    ("[quantify.kfactors]\nFe_Kz = 1.0\n", "Fe_Kz"),
    ("refit = [", "not valid TOML"),
])
def test_bad_configuration_names_the_key(tmp_path, text, needle):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match="README|TOML|Fe_Kz") as err:
        load_settings(cfg)
    assert needle in str(err.value)


def test_cli_stops_at_start_up_with_a_clear_message(tmp_path, capsys):
    assert main(["serve", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["process", str(tmp_path / "nope.hspy"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nope.hspy" in err
    assert main(["serve", "--kfactor", "Fe_Ka=-2"]) == 2
    assert "Fe_Ka" in capsys.readouterr().err


def test_cli_kfactors_reach_the_settings():
    from edx_live.cli import _overrides, _parser

    args = _parser().parse_args(["process", "f.hspy", "--out", "o", "--kfactor", "Fe_Ka=1.45",
                                 "--kfactor", "Pt_La=5.07", "--n-clusters", "3", "--workflow", "pca-gmm"])
    s = load_settings(None, _overrides(args))
    assert s.quantify.kfactors == {"Fe_Ka": 1.45, "Pt_La": 5.07}
    assert s.pca_gmm.n_clusters == 3 and s.refit.workflows == ["pca-gmm"]


def test_workflow_settings_reach_the_estimators():
    from edx_live.pipeline.refit import Analyzer

    s = load_settings(overrides={"umap_hdbscan": {"scaling": "robust", "energy_rebin": 1, "pca_components": 0,
                                                  "min_cluster_size": 12},
                                 "pca_gmm": {"n_clusters": 4, "scaling": "poisson"}})
    umap_params = Analyzer(s).estimator("umap-hdbscan").get_params()
    assert {k: umap_params[k] for k in ("scaling", "energy_rebin", "pca_components", "min_cluster_size")} == \
        {"scaling": "robust", "energy_rebin": 1, "pca_components": 0, "min_cluster_size": 12}
    gmm_params = Analyzer(s).estimator("pca-gmm").get_params()
    assert (gmm_params["n_clusters"], gmm_params["scaling"]) == (4, "poisson")
