"""The one gate: the config schema (strict types, YAML 1.2 numbers, cross-section rules
naming the key), paths resolved against the config's folder, validate/train parity,
and every paper reproduction's runs expressible as configs of the tasks."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import yaml

import nodekit
from nodekit import ConfigError
from nodekit.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _refused(raw: dict, **kw) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        nodekit.validate_config(raw, **kw)
    return e.value


# --------------------------------------------------------------------------- YAML and types


def test_yaml_reads_exponents_as_floats():
    from nodekit._config import ConfigLoader

    text = "a: 1e-5\nb: 1E+3\nc: 1.0e5\nd: -2e-3\ne: 12\nf: 1e-5x\ng: '1e-5'\nh: 1_000\n"
    data = yaml.load(text, Loader=ConfigLoader)
    assert data == {"a": 1e-5, "b": 1e3, "c": 1e5, "d": -2e-3, "e": 12, "f": "1e-5x",
                    "g": "1e-5", "h": 1000}
    assert isinstance(data["e"], int) and isinstance(data["a"], float)
    assert yaml.safe_load("a: 1e-5")["a"] == "1e-5"  # PyYAML's own loader: a string


def test_exponent_floats_in_files_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("solver: {rtol: 1e-5, atol: 1E-7}\noptimizer: {learning_rate: 3e-3}\n")
    cfg = nodekit.load_config(path, ["solver.dt0=1e-2"])
    assert (cfg.solver.rtol, cfg.solver.atol, cfg.solver.dt0) == (1e-5, 1e-7, 1e-2)
    assert cfg.optimizer.learning_rate == 3e-3


@pytest.mark.parametrize("raw, key, needle", [
    ({"solver": {"rtol": "1e-5"}}, "solver.rtol", "valid number"),      # a quoted string
    ({"train": {"steps": True}}, "train.steps", "valid integer"),       # a boolean
    ({"train": {"steps": 10.0}}, "train.steps", "valid integer"),       # a float
    ({"model": {"field": {"time_dependent": 1}}}, "model.field.time_dependent", "boolean"),
    ({"optimizer": {"learning_rate": float("nan")}}, "optimizer.learning_rate", "finite"),
    ({"data": {"t1": 1e308}}, "data.t1", "less than or equal to 10000"),
    ({"data": {"t1": 1e-300}}, "data.t1", "greater than or equal to 0.001"),
    ({"data": {"noise": float("inf")}}, "data.noise", "finite"),
    ({"task": "classificaton"}, "task", "did you mean 'classification'?"),
    ({"model": {"field": {"activation": 3}}}, "model.field.activation", "must be a string"),
])
def test_strict_types(raw, key, needle):
    e = _refused(raw)
    assert e.path == key and needle in e.message, str(e)


def test_huge_integers_are_one_message(tmp_path):
    """An integer of more than 4300 digits (Python refuses to parse it) in a file or an
    override: a ConfigError naming the key, and the CLI's exit 2 with one line."""
    digits = "9" * 5000
    path = tmp_path / "big.yaml"
    path.write_text(f"train:\n  steps: {digits}\n")
    with pytest.raises(ConfigError) as e:
        nodekit.load_config(path)
    assert e.value.path == "train.steps" and "5000 digits" in e.value.message
    with pytest.raises(ConfigError) as e:
        nodekit.load_config("tiny", [f"seed={digits}"])
    assert e.value.path == "seed" and "5000 digits" in e.value.message
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["validate", str(path)])
    assert rc == 2 and err.getvalue().count("\n") == 1 and "train.steps" in err.getvalue()


def test_unknown_override_names_the_whole_key():
    with pytest.raises(ConfigError) as e:
        nodekit.load_config("tiny", ["no.such.key=3"])
    assert e.value.path == "no.such.key"
    assert "unknown key 'no'" in e.value.message and "Allowed keys" in e.value.message
    with pytest.raises(ConfigError) as e:  # a file's unknown section is named as written
        nodekit.validate_config({"no": {"such": 3}})
    assert e.value.path == "no"


# --------------------------------------------------------------------------- cross-section rules

#: (raw config, the key the error must name)
RULES = [
    ({"task": "density", "data": {"name": "spiral"}}, "data.name"),
    ({"task": "trajectory", "model": {"cnf": {"t1": 2.0}}}, "model.cnf"),
    ({"task": "density", "model": {"latent": {}}}, "model.latent"),
    ({"task": "latent", "model": {"field": {"type": "second_order"}}}, "model.field.type"),
    ({"task": "density", "model": {"augment_dim": 2}}, "model.augment_dim"),
    ({"task": "classification", "model": {"classifier": {"type": "anode"}}},
     "model.classifier.type"),
    ({"task": "classification", "data": {"name": "anode_g1d"},
      "model": {"classifier": {"type": "odenet"}}}, "model.classifier.type"),
    ({"task": "classification", "data": {"name": "anode_g1d"},
      "model": {"classifier": {"loss": "cross_entropy"}}}, "model.classifier.loss"),
    ({"task": "classification", "model": {"classifier": {"readout": "none"}}},
     "model.classifier.readout"),
    ({"task": "classification", "regularisation": {"kinetic": 0.1}}, "regularisation.kinetic"),
    ({"regularisation": {"steer": {"width": 0.5}}}, "regularisation.steer"),
    ({"task": "density", "regularisation": {"steer": {"width": 2.0}}},
     "regularisation.steer.width"),
    ({"task": "density", "data": {"n_train": 64}, "train": {"batch_size": 65}},
     "train.batch_size"),
    ({"data": {"n_points": 30, "batch_time": 5}, "train": {"batch_size": 26}},
     "train.batch_size"),
    ({"task": "ude", "train": {"batch_size": 4}}, "train.batch_size"),
    ({"task": "latent", "optimizer": {"name": "lbfgs"}}, "optimizer.name"),
    ({"task": "density", "data": {"resample": True}, "optimizer": {"name": "lbfgs"},
      "train": {"batch_size": 10000}}, "data.resample"),
    ({"solver": {"engine": "nodekit", "name": "heun"}}, "solver.engine"),
    ({"task": "classification", "data": {"name": "concentric_spheres", "r1": 2.0}}, "data.r2"),
    ({"task": "latent", "data": {"n_points": 10, "n_obs": 8}}, "data.n_obs"),
    ({"data": {"name": "file", "path": "a.txt"}}, "data.path"),
    ({"data": {"name": "file", "path": "a.csv", "val_fraction": 0.5, "test_fraction": 0.5}},
     "data.val_fraction"),
    ({"task": "density", "data": {"name": "file", "path": "a.csv", "batch_time": 5}},
     "data.batch_time"),
    ({"task": "density", "data": {"name": "file", "path": "a.csv", "series": "id"}},
     "data.series"),
    ({"task": "classification", "data": {"name": "file", "path": "a.csv"}}, "data.path"),
    ({"data": {"name": "file", "path": "a.csv", "normalise": True},
      "model": {"field": {"type": "python", "target": "m:F"}}}, "data.normalise"),
    ({"model": {"field": {"type": "python"}}}, "model.field.target"),
    ({"model": {"field": {"type": "python", "target": "not a target"}}}, "model.field.target"),
    ({"model": {"field": {"target": "m:F"}}}, "model.field.target"),
    ({"model": {"field": {"kwargs": {"a": 1}}}}, "model.field.kwargs"),
    ({"task": "ude", "model": {"physics": {"type": "lotka_volterra",
                                           "kwargs": {"alpah": 1.0}}}},
     "model.physics.kwargs.alpah"),
    ({"task": "ude", "model": {"physics": {"type": "python"}}}, "model.physics.target"),
    ({"model": {"sparse_regression": {}}}, "model.sparse_regression"),
]


@pytest.mark.parametrize("raw, key", RULES, ids=[k for _, k in RULES])
def test_cross_section_rules_name_the_key(raw, key):
    e = _refused(raw)
    assert e.path == key, str(e)


def test_task_sections_are_filled_for_their_task_only():
    cfg = nodekit.validate_config({"task": "latent"})
    assert cfg.data.name == "latent_spirals" and cfg.model.latent.encoder == "ode_rnn"
    assert cfg.model.cnf is None and cfg.model.classifier is None
    cfg = nodekit.validate_config({"task": "classification"})
    assert cfg.data.name == "digits" and cfg.model.classifier.type == "auto"
    resolved = nodekit.validate_config(cfg.to_dict())  # the resolved config is a config
    assert resolved.hash() == cfg.hash()


def test_registries_agree():
    from nodekit._config import TASK_DATA, TASK_NAMES
    from nodekit._config._schema import ENCODERS, _DATA_MODELS
    from nodekit.models import ENCODERS as MODEL_ENCODERS
    from nodekit.tasks import TASKS

    assert tuple(TASKS) == TASK_NAMES and set(TASK_DATA) == set(TASK_NAMES)
    assert ENCODERS == MODEL_ENCODERS
    assert {n for names in TASK_DATA.values() for n in names} == set(_DATA_MODELS)


# --------------------------------------------------------------------------- paths


def test_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "run.yaml").write_text("data: {name: file, path: data/obs.csv}\n"
                                     "model: {field: {type: python, target: 'm:F'}}\n")
    monkeypatch.chdir(tmp_path)
    cfg = nodekit.load_config(folder / "run.yaml")
    assert cfg.data.path == str(folder / "data" / "obs.csv")
    assert cfg.model.field.path == str(folder) and cfg.base_dir == folder
    # an override's path is relative to the config's folder too
    cfg2 = nodekit.load_config(folder / "run.yaml", ["data.path=other.csv"])
    assert cfg2.data.path == str(folder / "other.csv")
    # a dict resolves against the current directory; a resolved config is unchanged
    cfg3 = nodekit.validate_config({"data": {"name": "file", "path": "obs.csv"}})
    assert cfg3.data.path == str(tmp_path / "obs.csv") and cfg3.base_dir == tmp_path
    again = nodekit.validate_config(yaml.safe_load(nodekit._config.dump_yaml(cfg)),
                                    base_dir="/")
    assert again.hash() == cfg.hash()


# --------------------------------------------------------------------------- parity


def _broken_configs(tmp_path: Path) -> dict[str, tuple[dict, str]]:
    """Broken configs across the gate: schema rules, data files, the user's code."""
    (tmp_path / "bad.csv").write_text("t,x\n0,1\n1,zz\n")
    (tmp_path / "ok.csv").write_text("t,x\n0,1\n1,2\n2,3\n")
    (tmp_path / "wide.py").write_text("import equinox as eqx, jax.numpy as jnp\n"
                                      "class F(eqx.Module):\n"
                                      "    def __call__(self, t, y, args):\n"
                                      "        return jnp.concatenate([y, y])\n")
    small = {"train": {"steps": 2, "batch_size": 1, "progress": False}}
    return {
        "schema": ({"solver": {"rtoll": 1e-3}}, "solver.rtoll"),
        "rule": ({"regularisation": {"steer": {"width": 0.5}}}, "regularisation.steer"),
        "missing-file": ({"data": {"name": "file", "path": "nope.csv"}, **small},
                         "does not exist"),
        "bad-cell": ({"data": {"name": "file", "path": "bad.csv", "batch_time": 2}, **small},
                     "'zz' is not a number"),
        "batch-too-big": ({"data": {"name": "file", "path": "ok.csv", "batch_time": 2},
                           "train": {"batch_size": 3}}, "train.batch_size"),
        "python-shape": ({"data": {"name": "file", "path": "ok.csv", "batch_time": 2},
                          "model": {"field": {"type": "python", "target": "wide:F"}}, **small},
                         "model.field.target"),
        "digits-mse": ({"task": "classification", "model": {"classifier": {"loss": "mse"}}},
                       "model.classifier.loss"),
    }


def _cli(*argv) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, err.getvalue()


def test_validate_and_train_refuse_alike(tmp_path):
    """For every broken config, `nodekit validate` and `nodekit train` exit with the
    same code (2) and the same one-line message."""
    for name, (raw, needle) in _broken_configs(tmp_path).items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        rc_v, err_v = _cli("validate", path)
        rc_t, err_t = _cli("train", path, "--workdir", tmp_path / f"w-{name}")
        assert rc_v == rc_t == 2, (name, rc_v, rc_t, err_v, err_t)
        assert err_v == err_t and err_v.count("\n") == 1 and needle in err_v, (name, err_v)


def test_refused_train_leaves_no_workdir(tmp_path):
    for name, (raw, _) in _broken_configs(tmp_path).items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        w = tmp_path / f"w-{name}"
        assert _cli("train", path, "--workdir", w)[0] == 2
        assert not w.exists() or not any(w.iterdir()), (name, sorted(w.rglob("*")))


# --------------------------------------------------------------------------- the papers' runs


def _paper_runs() -> dict[str, dict]:
    """Every training run of the eight reproductions in nodekit/experiments, as a
    config (full-run settings; `--quick` changes steps and sizes only)."""
    train = lambda steps, bs, **kw: {"steps": steps, "batch_size": bs, **kw}  # noqa: E731
    digits = {"task": "classification", "data": {"name": "digits", "seed": 0},
              "model": {"field": {"width": 16}},
              "optimizer": {"name": "adam", "learning_rate": 3e-3, "schedule": "cosine"},
              "train": train(600, 64)}
    g1d = lambda aug: {"task": "classification", "data": {"name": "anode_g1d"},  # noqa: E731
                       "model": {"augment_dim": aug,
                                 "field": {"width": 32, "depth": 1, "activation": "relu"},
                                 "classifier": {"type": "anode", "readout": "none"}},
                       "solver": {"name": "tsit5", "rtol": 1e-3, "atol": 1e-3},
                       "optimizer": {"learning_rate": 1e-2}, "train": train(400, 2)}
    spheres = lambda aug, seed: {  # noqa: E731
        "task": "classification", "seed": seed,
        "data": {"name": "concentric_spheres", "n": 1000, "dim": 2, "seed": 0},
        "model": {"augment_dim": aug, "field": {"width": 32, "depth": 1, "activation": "relu"},
                  "classifier": {"type": "anode"}},
        "solver": {"name": "tsit5", "rtol": 1e-5, "atol": 1e-5, "batch_mode": "joint"},
        "optimizer": {"learning_rate": 1e-3}, "train": train(60 * 12, 64, eval_batch_mode="vmap")}
    latent = lambda kind: {  # noqa: E731
        "task": "latent",
        "data": {"name": "latent_spirals", "n_samples": 1000, "n_obs": 30, "noise_std": 0.1,
                 "seed": 0},
        "model": {"field": {"width": 20, "depth": 2},
                  "latent": {"type": kind, "encoder": "gru", "latent_size": 4,
                             "hidden_size": 25, "obs_std": 0.3}},
        "solver": {"name": "tsit5", "rtol": 1e-3, "atol": 1e-4, "max_steps": 1024},
        "optimizer": {"learning_rate": 1e-2, "schedule": "cosine"}, "train": train(2000, 50)}
    density = lambda dist, steps, **model: {  # noqa: E731
        "task": "density",
        "data": {"name": "toy2d", "distribution": dist, "resample": True, "seed": 0,
                 "n_test": 2000, "test_seed": 10_001},
        "model": {"field": {"width": 64, "depth": 2}, "cnf": {"t1": 1.0, **model}},
        "solver": {"name": "tsit5", "rtol": 1e-5, "atol": 1e-5, "batch_mode": "joint"},
        "optimizer": {"learning_rate": 1e-3}, "train": train(steps, 256)}
    ude = lambda physics, width, depth: {  # noqa: E731
        "task": "ude", "data": {"name": "lotka_volterra", "t1": 3.0, "seed": 0},
        "model": {"field": {"width": width, "depth": depth}, "physics": physics,
                  "sparse_regression": {"degree": 2, "threshold": 0.1}},
        "solver": {"name": "tsit5", "rtol": 1e-6, "atol": 1e-6, "max_steps": 4096},
        "optimizer": {"learning_rate": 1e-2, "schedule": "cosine"}, "train": train(2000, 1)}
    lv = {"type": "lotka_volterra"}
    runs = {
        "chen2018-spiral": yaml.safe_load((ROOT / "configs" / "spiral.yaml").read_text()),
        "chen2018-odenet-digits/odenet": {**digits, "solver": {
            "name": "rk4", "dt0": 0.25, "max_steps": 4, "adjoint": "direct",
            "batch_mode": "joint"}},
        "chen2018-odenet-digits/resnet": {**digits, "model": {
            "field": {"width": 16}, "classifier": {"type": "resnet", "num_blocks": 6}},
            "solver": {"batch_mode": "joint"}},
        "dupont2019-anode/g1d-node": g1d(0), "dupont2019-anode/g1d-anode": g1d(1),
        **{f"dupont2019-anode/spheres-aug{a}-seed{s}": spheres(a, s)
           for a in (0, 1) for s in (0, 1, 2)},
        "chen2018-latent-ode/latent-ode": latent("latent_ode"),
        "chen2018-latent-ode/rnn": latent("rnn"),
        "rackauckas2020-ude/ude-adam": ude(lv, 5, 3),
        "rackauckas2020-ude/neural-ode-adam": {**ude(None, 32, 2), "model": {
            "field": {"width": 32, "depth": 2}}},
        "rackauckas2020-ude/ude-lbfgs": {**ude(lv, 5, 3), "optimizer": {"name": "lbfgs"},
                                         "train": train(1000, 1)},
        "grathwohl2019-ffjord/8gaussians": density("8gaussians", 1000),
        "grathwohl2019-ffjord/circles": density("circles", 4000),
        "grathwohl2019-ffjord/8gaussians-hutchinson": density("8gaussians", 1000,
                                                              trace="hutchinson"),
        "finlay2020-rnode/ffjord": density("2spirals", 1000),
        "finlay2020-rnode/rnode": {**density("2spirals", 1000), "regularisation": {
            "kinetic": 0.1, "jacobian": {"weight": 0.1, "estimator": "exact"}}},
        **{f"kelly2020-taynode/r2-{lam}": {**density("2spirals", 1000), "regularisation": {
            "taylor": {"weight": lam, "order": 2}}} for lam in (0.003, 0.01, 0.03)},
    }
    return runs


@pytest.mark.parametrize("name", sorted(_paper_runs()))
def test_paper_runs_are_configs(name):
    """Each run of the reproductions validates and builds its task and model."""
    import equinox as eqx
    import jax

    from nodekit.tasks import make_task

    cfg = nodekit.validate_config(_paper_runs()[name])
    task = make_task(cfg)
    model = eqx.filter_eval_shape(task.make_model, jax.random.PRNGKey(0))
    assert task.n_train >= cfg.train.batch_size and model is not None
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()


def test_device_counts_are_checked_by_the_gate(tmp_path):
    """More devices than this machine has, or a batch they cannot share, is refused by
    `validate` as by `train`."""
    path = tmp_path / "d.yaml"
    path.write_text("train: {devices: 64, batch_size: 64}\n")
    rc_v, err_v = _cli("validate", path)
    assert rc_v == 2 and "train.devices: got 64, but only" in err_v, err_v
    assert _refused({"train": {"devices": 2, "batch_size": 7}}).path == "train.batch_size"


def test_optimizer_kwargs_are_checked_against_optax():
    e = _refused({"optimizer": {"name": "adam", "kwargs": {"beta1": 0.8}}})
    assert e.path == "optimizer.kwargs.beta1" and "Allowed: b1, b2" in e.message, str(e)
    assert nodekit.validate_config({"optimizer": {"kwargs": {"b1": 0.8}}}).optimizer.kwargs == {
        "b1": 0.8}
