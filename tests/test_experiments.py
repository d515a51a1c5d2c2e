"""Paper reproductions (`nodekit reproduce`): the registry, claims whose verdict is
computed from numbers, the report/summary writer and the CLI's handling of names run
in milliseconds; every experiment's `--quick` run is one `slow` test each."""

from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pytest

from nodekit._errors import InputError
from nodekit.cli import main
from nodekit.experiments import EXPERIMENTS, _REGISTRY, run_experiment
from nodekit.experiments._common import Check, check, claim, write_report

#: The issue's eight experiments, in its order.
NAMES = (
    "chen2018-spiral",
    "chen2018-odenet-digits",
    "chen2018-latent-ode",
    "dupont2019-anode",
    "grathwohl2019-ffjord",
    "finlay2020-rnode",
    "kelly2020-taynode",
    "rackauckas2020-ude",
)
CLAIM_KEYS = {"claim", "paper", "measured", "holds", "checks"}


# ----------------------------------------------------------------- registry


def test_registry_lists_the_eight_experiments_in_order():
    assert tuple(EXPERIMENTS) == NAMES
    for exp in EXPERIMENTS.values():
        assert exp.paper and exp.claim and callable(exp.run)


@pytest.mark.parametrize("name,module", [(r[0], r[1]) for r in _REGISTRY])
def test_each_module_names_itself_and_runs(name, module):
    mod = importlib.import_module(f"nodekit.experiments.{module}")
    assert mod.NAME == name
    assert callable(mod.run)


def test_unknown_experiment_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="chen2018-spiral"):
        run_experiment("chen2018-spira", tmp_path)


# ----------------------------------------------------------------- checks and claims


@pytest.mark.parametrize(
    "lhs,op,rhs,holds",
    [(1, "<", 2, True), (2, "<", 2, False), (2, "<=", 2, True), (3, ">", 2, True),
     (2, ">=", 3, False), (np.float32(0.5), "<", 1, True), (np.int64(4), ">=", 4, True)],
)
def test_check_is_computed_from_the_numbers(lhs, op, rhs, holds):
    c = check(lhs, op, rhs, "a", "b")
    assert c.holds is holds
    assert str(c).startswith("a = ") and op in str(c) and "b = " in str(c)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("op", ["<", "<=", ">", ">="])
def test_non_finite_numbers_never_hold(bad, op):
    assert not check(bad, op, 1.0).holds
    assert not check(1.0, op, bad).holds
    assert not check(bad, op, bad).holds


def test_check_refuses_an_unknown_comparison():
    with pytest.raises(ValueError, match="comparison"):
        Check(1.0, "==", 1.0)


def test_claim_holds_only_when_all_checks_hold():
    good, bad = check(1, "<", 2), check(3, "<", 2)
    row = claim("c", "p", "m", good, good)
    assert set(row) == CLAIM_KEYS and row["holds"] is True and len(row["checks"]) == 2
    assert claim("c", "p", "m", good, bad)["holds"] is False
    assert claim("c", "p", "m", check(math.nan, "<", 2))["holds"] is False
    with pytest.raises(ValueError):
        claim("c", "p", "m")
    with pytest.raises(ValueError):
        claim("c", "p", "m", True)  # a hand-written verdict is refused


# ----------------------------------------------------------------- report writer


def test_write_report_schema(tmp_path):
    fig = tmp_path / "sub" / "fig.png"
    fig.parent.mkdir()
    fig.write_bytes(b"png")
    claims = [claim("fits", "paper says", "we measured 0.1", check(0.1, "<", 0.2, "err")),
              claim("diverged", "paper says", "nan", check(math.nan, "<", 0.2, "err"))]
    report = write_report(
        tmp_path, name="x-demo", title="x-demo: title", paper="Someone 2020", quick=True,
        claims=claims, settings={"steps": 3, "lr": 1e-3}, notes=["small scale"],
        figures=[fig], metrics={"loss": np.float32(0.25), "curve": np.array([1.0, np.nan])},
        tables=[("Extra", "| a |\n|---|\n| 1 |")], timings={"train": 1.5}, batch_mode="vmap",
    )
    assert report == tmp_path / "report.md"
    text = report.read_text()
    assert "x-demo --quick" in text and "1 of 2 claims hold" in text
    assert "**Batch mode:** vmap" in text and "## Extra" in text
    assert "![fig](sub/fig.png)" in text and "**no**" in text
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["experiment"] == "x-demo" and summary["quick"] is True
    assert summary["batch_mode"] == "vmap"
    assert [c["holds"] for c in summary["claims"]] == [True, False]
    for c in summary["claims"]:
        assert set(c) == CLAIM_KEYS
    assert summary["metrics"] == {"loss": 0.25, "curve": [1.0, None]}  # NaN -> null
    assert summary["figures"] == ["sub/fig.png"]


# ----------------------------------------------------------------- CLI


def test_cli_lists_the_experiments(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == list(NAMES)


@pytest.mark.parametrize("argv", [["reproduce", "no-such-paper"], ["reproduce"]])
def test_cli_bad_name_exits_2_with_one_message(argv, capsys, tmp_path):
    assert main(argv + ["--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nodekit: error:") and "Traceback" not in err
    assert not (tmp_path / "w").exists()


# ----------------------------------------------------------------- the experiments


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_quick_run_writes_report_and_claims(name, tmp_path):
    report = run_experiment(name, tmp_path, quick=True)
    assert report == tmp_path / "report.md" and report.read_text().startswith("# ")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["experiment"] == name and summary["quick"] is True
    assert summary["batch_mode"]
    assert summary["claims"], "an experiment states at least one claim"
    for c in summary["claims"]:
        assert set(c) == CLAIM_KEYS
        assert isinstance(c["holds"], bool) and c["checks"]
        assert all(isinstance(c[k], str) and c[k] for k in ("claim", "paper", "measured"))
    for f in summary["figures"]:
        assert (tmp_path / f).is_file()
