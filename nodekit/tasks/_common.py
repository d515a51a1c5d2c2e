"""What every task shares: the configured regularisers, the solve settings, a
regularised batch solve that never throws, the field built from `model.field` (the
user's own Python code included), the run's precision, and the checks that need the
data (batch sizes, full batches for L-BFGS)."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import zlib
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._config import Config
from .._errors import ConfigError
from .._fields import MLPField, SecondOrderField
from .._neural_ode import NeuralODE


# ----------------------------------------------------------------- regularisers, solves


def build_regularisers(config: Config):
    """The regulariser modules configured in `config.regularisation` (may be empty)."""
    reg = config.regularisation
    if reg.kinetic is None and reg.jacobian is None and reg.taylor is None:
        return ()
    from .._regularisers import JacobianFrobenius, KineticEnergy, TaylorRK

    out = []
    if reg.kinetic is not None:
        out.append(KineticEnergy(reg.kinetic.weight))
    if reg.jacobian is not None:
        out.append(
            JacobianFrobenius(reg.jacobian.weight, estimator=reg.jacobian.estimator,
                              noise=reg.jacobian.noise)
        )
    if reg.taylor is not None:
        out.append(TaylorRK(reg.taylor.weight, order=reg.taylor.order, method=reg.taylor.method))
    return tuple(out)


_REG_NAMES = {"KineticEnergy": "kinetic", "JacobianFrobenius": "jacobian", "TaylorRK": "taylor"}


def regulariser_names(regularisers) -> list[str]:
    return [_REG_NAMES.get(type(r).__name__, type(r).__name__) for r in regularisers]


def solve_kwargs(config: Config) -> dict:
    """The config's solver settings as keyword arguments of a solve or a model."""
    from .._settings import SolveSettings

    return dict(settings=SolveSettings.from_config(config.solver))


def eval_mode(config: Config) -> str:
    """The batch mode of evaluation solves (`train.eval_batch_mode`, default the
    training one)."""
    return config.train.eval_batch_mode or config.solver.batch_mode


def _stats_aux(stats, n: int, per_sample: bool) -> dict:
    failed = jnp.asarray(stats.result) != 0
    n_fail = jnp.sum(failed) if per_sample else jnp.sum(failed) * n
    return {
        "nfe_forward": jnp.mean(stats.nfe).astype(jnp.float32),
        "solver_steps": jnp.mean(stats.num_steps).astype(jnp.float32),
        "failures": n_fail.astype(jnp.float32),
        "solver_result": jnp.max(jnp.asarray(stats.result)).astype(jnp.float32),
    }


def solve_batch_regularised(field, y0s, ts, regularisers, key, config: Config, mode=None):
    """Solve a batch with the configured batch mode and regularisers, never throwing.

    `ts` is one grid `(T,)` shared by the batch, or one grid per sample `(B, T)` (then
    each sample is solved on its own, whatever the batch mode).

    **Returns:** `(ys (B, T, d), penalties (n_reg,), aux)` with aux holding batch-mean
    `nfe_forward`, `solver_steps` and the count of failed solves `failures`.
    """
    mode = mode or config.solver.batch_mode
    quadrature = config.regularisation.quadrature
    if jnp.ndim(ts) == 2 and ts.shape[0] == 1:  # one sample: solved as such, not vmapped
        if regularisers:
            from .._regularisers import regularised_odeint

            ys, penalties, stats = regularised_odeint(field, y0s[0], ts[0], regularisers,
                                                      key=key, quadrature=quadrature,
                                                      throw=False, **solve_kwargs(config))
        else:
            sol = NeuralODE(field, **solve_kwargs(config)).solve(ts[0], y0s[0], throw=False)
            ys, stats, penalties = sol.ys, sol.stats, jnp.zeros((0,), y0s.dtype)
        return ys[None], penalties, _stats_aux(stats, 1, True)
    if jnp.ndim(ts) == 2:
        n = y0s.shape[0]
        if regularisers:
            from .._regularisers import regularised_odeint

            keys = jax.random.split(key, n)
            ys, penalties, stats = jax.vmap(
                lambda y0, t, k: regularised_odeint(field, y0, t, regularisers, key=k,
                                                    quadrature=quadrature, throw=False,
                                                    **solve_kwargs(config))
            )(y0s, ts, keys)
            penalties = jnp.mean(penalties, axis=0)
        else:
            node = NeuralODE(field, **solve_kwargs(config))
            sol = jax.vmap(lambda y0, t: node.solve(t, y0, throw=False))(y0s, ts)
            ys, stats, penalties = sol.ys, sol.stats, jnp.zeros((0,), y0s.dtype)
        return ys, penalties, _stats_aux(stats, n, True)
    if regularisers:
        from .._regularisers import regularised_odeint_batch

        ys, penalties, stats = regularised_odeint_batch(
            field, y0s, ts, regularisers, key=key, mode=mode, throw=False,
            quadrature=quadrature, **solve_kwargs(config),
        )
    else:
        node = NeuralODE(field, **solve_kwargs(config))
        sol = node.solve_batch(ts, y0s, mode=mode, throw=False)
        ys, stats, penalties = sol.ys, sol.stats, jnp.zeros((0,), y0s.dtype)
    return ys, penalties, _stats_aux(stats, y0s.shape[0], mode == "vmap")


def add_penalties(task_loss, penalties, regularisers, aux: dict):
    total = task_loss
    for name, r, p in zip(regulariser_names(regularisers), regularisers, penalties):
        aux[f"reg_{name}"] = p
        total = total + r.weight * p
    aux["loss_task"] = task_loss
    return total


def as_data(x):
    """A host array used inside a traced function (evaluation data closed over by
    `evaluate`): behind an optimisation barrier, so that XLA does not constant-fold a
    whole solve over constant per-series time grids (which it gives up on after a
    while, with log noise and a slower compile)."""
    return jax.lax.optimization_barrier(jnp.asarray(x))


# ----------------------------------------------------------------- precision


def cast_floats(tree, dtype):
    """`tree` with every floating-point array leaf in `dtype` (the run's precision);
    other leaves untouched."""
    dtype = jnp.dtype(dtype)

    def cast(x):
        if eqx.is_inexact_array(x) and x.dtype != dtype:
            return x.astype(dtype)
        return x

    return jax.tree_util.tree_map(cast, tree)


def x64_scope(dtype):
    """`jax.enable_x64(True)` for a float64 run (a scoped setting, never global), else
    a no-op; for the host-side checks a task makes while it is built."""
    import contextlib

    return jax.enable_x64(True) if np.dtype(dtype) == np.float64 else contextlib.nullcontext()


# ----------------------------------------------------------------- the user's code


class UserTarget:
    """A class or factory from the user's own code, named `"module:Name"` in a config
    (`model.field` or `model.physics` with `type: python`).

    The module is imported with `folder` (the config's folder, or the section's `path`)
    first on the import path for the import only: a module file in that folder is
    loaded from there, afresh each time (an edited file is picked up), under a
    private name; any other module is imported as usual. **This runs the user's code.**

    **Raises:** `ConfigError` naming the key (`model.field.target`, ...) and the target
    when the module cannot be imported, has no such name, or the name is not callable.
    """

    def __init__(self, target: str, folder: str, kwargs: dict, key: str):
        self.target, self.kwargs, self.key = target, dict(kwargs), key
        self.folder = Path(folder)
        module_name, _, self.attr = target.partition(":")
        self.source = b""
        module = self._import(module_name)
        if not hasattr(module, self.attr):
            names = [n for n in dir(module) if not n.startswith("_")]
            from .._errors import closest

            hint = closest(self.attr, names)
            did = f"; did you mean {hint!r}?" if hint else "."
            raise ConfigError(key, f"module {module_name!r} ({self._where(module)}) has no "
                                   f"{self.attr!r}{did} Names found: {', '.join(names[:20])}.")
        self.factory = getattr(module, self.attr)
        if not callable(self.factory):
            raise ConfigError(key, f"{target!r} is a {type(self.factory).__name__}, not a "
                                   "class or function that returns the field.")

    @staticmethod
    def _where(module) -> str:
        return getattr(module, "__file__", None) or "built in"

    def _import(self, module_name: str):
        top = module_name.split(".")[0]
        single = self.folder / f"{top}.py"
        folder = str(self.folder)
        added = folder not in sys.path
        if added:
            sys.path.insert(0, folder)
        try:
            if "." not in module_name and single.is_file():
                # the module beside the config: loaded from its file, afresh, privately
                self.source = single.read_bytes()
                tag = zlib.crc32(str(single.resolve()).encode())
                spec = importlib.util.spec_from_file_location(f"_nodekit_user_{tag:08x}_{top}",
                                                              single)
                module = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(spec.name, None)
                    raise
                return module
            module = importlib.import_module(module_name)
            file = getattr(module, "__file__", None)
            if file and Path(file).is_file():
                self.source = Path(file).read_bytes()
            return module
        except ConfigError:
            raise
        except Exception as e:  # the user's code: any error it raises while importing
            raise ConfigError(self.key, f"cannot import {self.target!r} (looked in {folder} "
                                        f"and the installed packages): {type(e).__name__}: "
                                        f"{_one_line(e)}") from None
        finally:
            if added:
                try:
                    sys.path.remove(folder)
                except ValueError:
                    pass

    def build(self, key, dtype):
        """Call the target with `kwargs` (and `key=key` when it takes a `key`) and cast
        its floating-point arrays to `dtype`."""
        kwargs = dict(self.kwargs)
        try:
            params = inspect.signature(self.factory).parameters
        except (TypeError, ValueError):
            params = {}
        if "key" in params:
            kwargs["key"] = key
        try:
            obj = self.factory(**kwargs)
        except Exception as e:
            raise ConfigError(self.key.rsplit(".", 1)[0] + ".kwargs",
                              f"calling {self.target!r} with {self.kwargs!r} failed: "
                              f"{type(e).__name__}: {_one_line(e)} (the target is called "
                              "with these kwargs to make the field: name a class or a "
                              "factory, not the field function itself).") from None
        return cast_floats(obj, dtype)

    def check(self, size: int, dtype, key) -> None:
        """Build the target abstractly and call it on a state of `size`, before
        anything is compiled: it must be an Equinox module callable as
        `f(t, y, args)` whose output has the state's shape and dtype.

        **Raises:** `ConfigError` naming the key and the target."""
        dtype = np.dtype(dtype)
        with x64_scope(dtype):
            field = eqx.filter_eval_shape(lambda k: self.build(k, dtype), key)
            if not isinstance(field, eqx.Module):
                raise ConfigError(self.key, f"{self.target!r} returned a "
                                            f"{type(field).__name__}; it must return an "
                                            "Equinox module (a subclass of eqx.Module, e.g. "
                                            "nodekit.AbstractVectorField) so that its arrays "
                                            "are trained.")
            try:
                sig = inspect.signature(field)
            except (TypeError, ValueError):
                sig = None
            if sig is not None:
                try:
                    sig.bind(0.0, 0.0, None)
                except TypeError:
                    raise ConfigError(self.key, f"{self.target!r} must be callable as "
                                                f"f(t, y, args) (time, state, extra "
                                                f"arguments); its signature is {sig}.") from None
            t = jax.ShapeDtypeStruct((), dtype)
            y = jax.ShapeDtypeStruct((size,), dtype)
            try:
                out = eqx.filter_eval_shape(lambda f, t_, y_: f(t_, y_, None), field, t, y)
            except Exception as e:
                raise ConfigError(self.key, f"calling {self.target!r} as f(t, y, args) on a "
                                            f"state of shape ({size},) failed: "
                                            f"{type(e).__name__}: {_one_line(e)}") from None
        shape = getattr(out, "shape", None)
        if shape != (size,):
            got = tuple(shape) if shape is not None else type(out).__name__
            raise ConfigError(self.key, f"{self.target!r} returns {got} for a state of shape "
                                        f"({size},); dy/dt must have the state's shape "
                                        f"({size},).")
        if np.dtype(out.dtype) != dtype:
            raise ConfigError(self.key, f"{self.target!r} returns {out.dtype} for a {dtype} "
                                        f"state (precision: {dtype}); build its arrays with "
                                        "y.dtype or without a fixed dtype.")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 300 else text[:300] + "..."


def user_field(config: Config) -> UserTarget | None:
    """The user's field class or factory of a `type: python` field (imported now)."""
    f = config.model.field
    if f.type != "python":
        return None
    return UserTarget(f.target, f.path, f.kwargs, "model.field.target")


def make_field(config: Config, size: int, key, dtype=None, user: UserTarget | None = None):
    """The vector field `model.field` describes on a state of `size`, its arrays in
    `dtype` (default the config's precision)."""
    f = config.model.field
    dtype = np.dtype(config.precision) if dtype is None else dtype
    if f.type == "python":
        return (user or user_field(config)).build(key, dtype)
    if f.type == "second_order":
        if size % 2:
            raise ConfigError("model.field.type", f"second_order needs an even state size, got {size}.")
        field = SecondOrderField.from_mlp(size // 2, f.width, f.depth, activation=f.activation,
                                          time_dependent=f.time_dependent, key=key)
    else:
        field = MLPField(size, f.width, f.depth, activation=f.activation,
                         time_dependent=f.time_dependent, input_power=f.input_power, key=key)
    return cast_floats(field, dtype)


# ----------------------------------------------------------------- checks on the data


def check_batch_size(config: Config, n_train: int, what: str) -> None:
    """`train.batch_size` against the `n_train` training items (named `what`), and
    the full batch that `lbfgs` needs.

    **Raises:** `ConfigError` naming `train.batch_size`."""
    bs = config.train.batch_size
    if bs > n_train:
        raise ConfigError("train.batch_size", f"got {bs}: at most the {n_train} training "
                                              f"{what}.")
    if config.optimizer.name == "lbfgs" and bs != n_train:
        raise ConfigError("train.batch_size", f"got {bs}: optimizer.name 'lbfgs' needs a "
                                              "deterministic full-batch loss, so the batch must "
                                              f"be the whole training set: set "
                                              f"train.batch_size={n_train} (or train with adam "
                                              "on minibatches).")


def batch_index(config: Config, step: int, n: int) -> np.ndarray:
    """The indices of step `step`'s batch from `n` training items, as
    `train.batch_order` says: `epochs` (default; `nodekit.data.batch_indices`: each
    epoch a permutation) or `random` (drawn anew each step, without replacement, by
    `numpy.random.default_rng(seed * 2**32 + step)`). A pure function of the seed and
    the step, so a resumed run draws the same batches."""
    bs = config.train.batch_size
    if config.train.batch_order == "random":
        return np.random.default_rng(config.seed * 2**32 + step).choice(n, bs, replace=False)
    from ..data import batch_indices

    return batch_indices(config.seed, step, n, bs)


def batch_rng(config: Config, step: int) -> np.random.Generator:
    """The generator of step `step`'s batch: a pure function of the seed and the step."""
    return np.random.default_rng([config.seed, 1, step])


def file_fingerprint(path) -> bytes:
    """The bytes a data file's fingerprint covers (its content)."""
    from .._io import read_bytes_bounded

    return read_bytes_bounded(path, kind="data", what=f"data file {str(path)!r}")


def split_parts(config: Config, n: int, what: str, labels=None):
    """`(train, eval, test)` indices of the user's file (`data.val_fraction`,
    `data.test_fraction`, `data.seed`): eval is the validation part, else the test
    part, else the training part; test is the test part when a validation part is
    also held out (reported at the end), else empty."""
    from ..data import split_three

    d = config.data
    train, val, test = split_three(n, val_fraction=d.val_fraction, test_fraction=d.test_fraction,
                                   seed=config.data_seed, labels=labels, what=what)
    if len(val):
        return train, val, test
    if len(test):
        return train, test, test[:0]
    return train, train, test
