"""The `classification` task: ODE-Net, ANODE and the ResNet baseline on images or
vectors: scikit-learn's digits, ANODE's 1-D map and concentric spheres, or the user's
NPZ of labelled examples."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._config import Config
from .._errors import ConfigError
from .._fields import MLPField
from .._neural_ode import NeuralODE
from ._base import AbstractTask
from ._common import (
    batch_index,
    cast_floats,
    check_batch_size,
    eval_mode,
    file_fingerprint,
    solve_kwargs,
    split_parts,
)


class _VectorODENet(eqx.Module):
    """A neural ODE on vectors (augmented by `augment_dim` zeros) with a linear map of
    its final state to class logits: the multi-class counterpart of
    `nodekit.models.ANODEClassifier`."""

    ode: NeuralODE
    readout: eqx.nn.Linear
    t1: float = eqx.field(static=True)

    def forward_batch(self, xs, *, mode: str = "vmap", throw: bool = False):
        ts = jnp.array([0.0, self.t1], xs.dtype)
        sol = self.ode.solve_batch(ts, xs, mode=mode, throw=throw)
        return jax.vmap(self.readout)(sol.ys[:, -1]), sol.stats


class _FlowReadout(eqx.Module):
    """A neural ODE whose prediction is the first coordinate of its final state, with
    no readout (Dupont et al.'s 1-D example: a linear readout could flip the sign and
    hide that the flow cannot)."""

    ode: NeuralODE
    t1: float = eqx.field(static=True)

    def forward_batch(self, xs, *, mode: str = "vmap", throw: bool = False):
        ts = jnp.array([0.0, self.t1], xs.dtype)
        sol = self.ode.solve_batch(ts, xs, mode=mode, throw=throw)
        return sol.ys[:, -1, 0], sol.stats


class ClassificationTask(AbstractTask):
    """Train a classifier whose features flow by an ODE (or its ResNet baseline).

    Data: `digits` (8x8 images, 10 classes; stratified split), `anode_g1d` (two points
    of the line, ±1 targets; trained and evaluated on both), `concentric_spheres`
    (vectors, ±1 targets; stratified split), or `file` (an NPZ with `x` and `y`; see
    `nodekit.data.read_labelled`).

    Model (`model.classifier`): `odenet` (`nodekit.models.ODENetClassifier`, a
    convolutional field of `model.field.width` channels), `resnet`
    (`nodekit.models.ResNetClassifier`, `num_blocks` blocks of the same width), or
    `anode` on vectors: with `loss: mse` an `nodekit.models.ANODEClassifier` (one
    output, ±1 targets; `readout: none` predicts with the state's first coordinate
    instead), with `loss: cross_entropy` a neural ODE with a linear map to the class
    logits. The `anode` field is `model.field` on the input augmented by
    `model.augment_dim` zeros.

    Loss: softmax cross-entropy (classes) or the mean squared error to ±1 targets.
    Batches are `train.batch_size` examples per step, an epoch's random permutation at
    a time (`nodekit.data.batch_indices`; `train.batch_order: random` draws each step's
    batch anew). Evaluation: loss and accuracy on the test
    part (`eval_loss`, `eval_accuracy`) and the solves' NFE.

    **Example:**

    ```python
    import jax
    import nodekit
    from nodekit.tasks import make_task

    cfg = nodekit.validate_config({"task": "classification", "data": {"name": "anode_g1d"},
                                   "model": {"augment_dim": 1, "field": {"width": 8}},
                                   "train": {"batch_size": 2}})
    task = make_task(cfg)
    loss, aux = task.loss(task.make_model(jax.random.PRNGKey(0)), task.batch(0), None)
    ```
    """

    def __init__(self, config: Config):
        super().__init__(config)
        d, c = config.data, config.model.classifier
        dt = self.dtype
        final_test = None
        if d.name == "digits":
            from ..data import digits

            train, test = digits(seed=config.data_seed, test_fraction=d.test_fraction)
        elif d.name == "anode_g1d":
            from ..data import anode_g1d

            train = test = anode_g1d()
        elif d.name == "concentric_spheres":
            from ..data import concentric_spheres

            train, test = concentric_spheres(d.n, dim=d.dim, r1=d.r1, r2=d.r2, r3=d.r3,
                                             test_fraction=d.test_fraction, seed=config.data_seed)
        else:
            train, test, final_test = self._load_file(config)
        self.images = train.x.ndim == 4
        self.classes = np.issubdtype(train.y.dtype, np.integer)
        if d.name == "file":
            self._check_file_model(config)
        self.kind = c.type if c.type != "auto" else ("odenet" if self.images else "anode")
        self.n_classes = int(max(train.y.max(), test.y.max() if len(test) else 0)) + 1 \
            if self.classes else 1
        self.train_x, self.test_x = np.asarray(train.x, dt), np.asarray(test.x, dt)
        ydt = np.int32 if self.classes else dt
        self.train_y, self.test_y = np.asarray(train.y, ydt), np.asarray(test.y, ydt)
        self._final_test = None if final_test is None else (
            np.asarray(final_test.x, dt), np.asarray(final_test.y, ydt))
        self.n_train = len(self.train_y)
        check_batch_size(config, self.n_train, "examples")

    def _load_file(self, config: Config):
        from ..data import Normalisation, read_labelled

        d = config.data
        data = read_labelled(d.path)
        self._fingerprint_parts.append(file_fingerprint(d.path))
        classes = np.issubdtype(data.y.dtype, np.integer)
        train_idx, eval_idx, test_idx = split_parts(config, len(data), "examples",
                                                    labels=data.y if classes else None)
        train = data.subset(train_idx)
        if d.normalise:
            axis = 1 if data.x.ndim == 4 else None
            norm = Normalisation.fit(train.x, axis=axis)
            self.normalisation = norm
            apply = (lambda x: norm.apply(x, axis=1)) if axis else norm.apply
            data = type(data)(apply(data.x), data.y)
            train = data.subset(train_idx)
        test = data.subset(test_idx) if len(test_idx) else None
        return train, data.subset(eval_idx), test

    def _check_file_model(self, config: Config):
        c = config.model.classifier
        path = config.data.path
        if self.images and c.type == "anode":
            raise ConfigError("model.classifier.type", f"got 'anode': {path!r} holds images "
                                                       "(N, C, H, W); use 'odenet' or 'resnet'.")
        if not self.images and c.type in ("odenet", "resnet"):
            raise ConfigError("model.classifier.type", f"got {c.type!r}: {path!r} holds "
                                                       "vectors (N, D); use 'anode'.")
        if self.images and config.model.augment_dim:
            raise ConfigError("model.augment_dim", "augmented dimensions are for vectors "
                                                   "(the anode model); these are images.")
        if self.classes and c.loss == "mse":
            raise ConfigError("model.classifier.loss", f"got 'mse': {path!r} holds integer "
                                                       "classes; use 'cross_entropy' (or "
                                                       "'auto'), or save ±1 targets.")
        if not self.classes and c.loss == "cross_entropy":
            raise ConfigError("model.classifier.loss", f"got 'cross_entropy': {path!r} holds "
                                                       "±1 targets; use 'mse' (or 'auto').")
        if self.classes and c.readout == "none":
            raise ConfigError("model.classifier.readout", "got 'none': with integer classes "
                                                          "the prediction needs a readout; use "
                                                          "'linear'.")
        if self.images and c.readout == "none":
            raise ConfigError("model.classifier.readout", "got 'none': only the anode model "
                                                          "on vectors can read its prediction "
                                                          "off the state.")

    # -- the interface

    def make_model(self, key):
        from ..models import ANODEClassifier, ODENetClassifier, ResNetClassifier

        cfg = self.config
        f, c, aug = cfg.model.field, cfg.model.classifier, cfg.model.augment_dim
        solve = solve_kwargs(cfg)
        if self.kind == "odenet":
            model = ODENetClassifier(self.n_classes, f.width, in_channels=self.train_x.shape[1],
                                     t1=c.t1, key=key, **solve)
        elif self.kind == "resnet":
            model = ResNetClassifier(self.n_classes, f.width, c.num_blocks,
                                     in_channels=self.train_x.shape[1], key=key)
        elif self.classes:
            kf, kr = jax.random.split(key)
            size = self.train_x.shape[1] + aug
            field = MLPField(size, f.width, f.depth, activation=f.activation,
                             time_dependent=f.time_dependent, key=kf)
            model = _VectorODENet(NeuralODE(field, augment_dim=aug, **solve),
                                  eqx.nn.Linear(size, self.n_classes, key=kr), float(c.t1))
        elif c.readout == "none":
            field = MLPField(self.train_x.shape[1] + aug, f.width, f.depth,
                             activation=f.activation, time_dependent=f.time_dependent, key=key)
            model = _FlowReadout(NeuralODE(field, augment_dim=aug, **solve), float(c.t1))
        else:
            model = ANODEClassifier(self.train_x.shape[1], aug, f.width, f.depth,
                                    activation=f.activation, time_dependent=f.time_dependent,
                                    t1=c.t1, key=key, **solve)
        return cast_floats(model, self.dtype)

    def batch(self, step: int):
        i = batch_index(self.config, step, self.n_train)  # (train.batch_order)
        return {"x": self.train_x[i], "y": self.train_y[i]}

    def _loss(self, model, x, y, mode):
        from ..models._common import stats_aux

        logits, stats = model.forward_batch(x, mode=mode, throw=False)
        if self.classes:
            loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
            acc = jnp.mean(jnp.argmax(logits, -1) == y)
        else:
            loss = jnp.mean((logits - y) ** 2)
            acc = jnp.mean(jnp.sign(logits) == jnp.sign(y))
        aux = stats_aux(stats, x.shape[0])
        return loss, {"accuracy": acc.astype(jnp.float32), **aux}

    def loss(self, model, batch, key):
        loss, aux = self._loss(model, jnp.asarray(batch["x"]), jnp.asarray(batch["y"]),
                               self.config.solver.batch_mode)
        out = {"loss_task": loss, "accuracy": aux["accuracy"], "nfe_forward": aux["nfe"],
               "solver_steps": aux["solver_steps"], "failures": aux["failures"]}
        return loss, out

    def _eval(self, model, x, y):
        loss, aux = self._loss(model, x, y, eval_mode(self.config))
        return {"eval_loss": loss, "eval_accuracy": aux["accuracy"], "eval_nfe": aux["nfe"],
                "eval_failed": (aux["failures"] > 0).astype(jnp.float32)}

    def evaluate(self, model):
        return self._eval(model, jnp.asarray(self.test_x), jnp.asarray(self.test_y))

    def finalise(self, model) -> dict:
        """The test part's loss and accuracy when a validation part was used for
        evaluation (the user's files)."""
        if self._final_test is None:
            return {}
        ev = eqx.filter_jit(self._eval)(model, *map(jnp.asarray, self._final_test))
        return {"test_loss": float(ev["eval_loss"]), "test_accuracy": float(ev["eval_accuracy"])}
