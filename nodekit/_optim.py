"""Optax optimisers and learning-rate schedules by name, from an `OptimizerConfig`."""

from __future__ import annotations

from typing import Any

import jax
import optax

from ._config import LBFGS_KWARGS, OptimizerConfig
from ._errors import InputError


def make_optimizer(cfg: OptimizerConfig, total_steps: int, *,
                   learning_rate=None) -> optax.GradientTransformation:
    """An Optax optimiser from its config: name, learning rate and schedule, gradient
    clipping, weight decay and extra keyword arguments.

    `learning_rate` replaces `cfg.learning_rate` (the peak of its schedule) and may be a
    traced scalar: a sweep builds each member's optimiser inside its compiled step with
    the member's rate as an input, the same formulation as a single run (which passes
    the config's number), so members with different rates share one program.

    **Example:**

    ```python
    import jax.numpy as jnp
    import nodekit

    cfg = nodekit.validate_config({"optimizer": {
        "name": "adamw", "learning_rate": 3e-3, "schedule": "warmup_cosine",
        "warmup_steps": 100}})
    optim = nodekit.make_optimizer(cfg.optimizer, total_steps=1000)
    params = {"w": jnp.ones(3)}
    updates, state = optim.update({"w": jnp.ones(3)}, optim.init(params), params)
    ```

    `name="lbfgs"` gives `optax.lbfgs` with a zoom line search (`kwargs`: `memory_size`,
    `max_linesearch_steps`): meant for full-batch fine-tuning of a deterministic loss,
    e.g. a UDE after Adam. Its `update` needs `value`, `grad` and `value_fn`, which the
    training step passes (see `step_body`); the config refuses schedules, clipping,
    weight decay, minibatches and noisy losses with it.
    """
    peak = cfg.learning_rate if learning_rate is None else learning_rate
    if cfg.name == "lbfgs":
        opts = {**LBFGS_KWARGS, **{k: int(v) for k, v in cfg.kwargs.items()}}
        linesearch = optax.scale_by_zoom_linesearch(
            max_linesearch_steps=opts["max_linesearch_steps"], initial_guess_strategy="one")
        return optax.lbfgs(peak, memory_size=opts["memory_size"], linesearch=linesearch)
    lr: Any = peak
    if cfg.schedule == "cosine":
        lr = optax.cosine_decay_schedule(peak, total_steps, alpha=cfg.decay_rate)
    elif cfg.schedule == "warmup_cosine":
        lr = optax.warmup_cosine_decay_schedule(
            0.0, peak, max(cfg.warmup_steps, 1), max(total_steps, cfg.warmup_steps + 1),
            end_value=peak * cfg.decay_rate,
        )
    elif cfg.schedule == "exponential":
        lr = optax.exponential_decay(peak, total_steps, cfg.decay_rate)
    kwargs = dict(cfg.kwargs)
    if cfg.name == "adamw":
        kwargs.setdefault("weight_decay", cfg.weight_decay)
    try:
        base = getattr(optax, cfg.name)(lr, **kwargs)
    except TypeError as e:
        raise InputError(f"optimizer.kwargs: {cfg.name} does not accept {sorted(cfg.kwargs)}: {e}") from None
    chain = []
    if cfg.clip_norm is not None:
        chain.append(optax.clip_by_global_norm(cfg.clip_norm))
    if cfg.weight_decay and cfg.name != "adamw":
        chain.append(optax.add_decayed_weights(cfg.weight_decay))
    chain.append(base)
    return optax.chain(*chain) if len(chain) > 1 else base


def needs_value_fn(opt_state) -> bool:
    """Whether the optimiser holds a line search (e.g. `lbfgs`), whose `update` needs
    the loss's `value`, `grad` and `value_fn`. Decided from the state's types when the
    step is traced, so other optimisers' step is unchanged."""
    searches = (optax.ScaleByZoomLinesearchState, optax.ScaleByBacktrackingLinesearchState)
    leaves = jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, searches))
    return any(isinstance(x, searches) for x in leaves)
