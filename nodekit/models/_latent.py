"""Latent ODE with an ODE-RNN encoder (Rubanova, Chen and Duvenaud 2019, "Latent ODEs for
Irregularly-Sampled Time Series"; Chen et al. 2018, section 5), and a time-aware GRU
baseline with the same interface.

Sequences are irregularly sampled: `times (T,)`, `values (T, D)` and a `mask` of shape
`(T, D)` or `(T,)` (1 where a value was observed). Padding a sequence with repeated last
times and mask 0 is allowed.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxtyping import ArrayLike, Float, PRNGKeyArray

from .._errors import InputError
from .._fields import MLPField, get_activation
from .._neural_ode import NeuralODE
from .._odeint import SolveStats
from .._settings import SolveSettings
from ._common import (
    add_stats,
    check_choice,
    check_int,
    check_positive,
    model_settings,
    solve,
    solve_from,
    stats_aux,
    sum_stats,
    zero_stats,
)

#: A latent ODE's solve settings unless told otherwise (loose: the data are noisy).
LATENT_SETTINGS = SolveSettings(rtol=1e-3, atol=1e-4, max_steps=1024)

#: Encoders of `LatentODE`: the ODE-RNN (the hidden state flows by an ODE between
#: observations) or a GRU told the time gaps (`Δt` as an extra input).
ENCODERS = ("ode_rnn", "gru")


# ----------------------------------------------------------------- shared pieces


def _check_sequence(owner: str, data_size: int, times, values, mask):
    """Validate one sequence and return `(times, values, mask (T, D) float)`."""
    times = jnp.asarray(times)
    values = jnp.asarray(values)
    if values.ndim != 2 or values.shape[1] != data_size:
        raise InputError(
            f"{owner}: values must have shape (T, {data_size}) for one sequence, got "
            f"{tuple(values.shape)}."
        )
    if times.shape != values.shape[:1]:
        raise InputError(
            f"{owner}: times must have shape ({values.shape[0]},) to match values, got "
            f"{tuple(times.shape)}."
        )
    mask = jnp.asarray(mask)
    if mask.shape == values.shape[:1]:
        mask = mask[:, None]
    if mask.shape not in (values.shape, (values.shape[0], 1)):
        raise InputError(
            f"{owner}: mask must have shape {tuple(values.shape)} or ({values.shape[0]},), "
            f"got {tuple(mask.shape)}."
        )
    mask = jnp.broadcast_to(mask, values.shape).astype(values.dtype)
    if not jnp.issubdtype(times.dtype, jnp.floating):
        times = times.astype(values.dtype)
    return times, values, mask


def _encode_backwards(cell: eqx.nn.GRUCell, evolve, hidden_size: int, times, values, mask,
                      throw: bool):
    """Run a GRU backwards in time over the observations, from the last time to
    `times[0]`; returns `(h at times[0], stats)`.

    With `evolve` (a `NeuralODE`), the hidden state flows by that ODE between observation
    times (ODE-RNN); without, the GRU sees the time gap since its last update as an extra
    input. Rows with no observed value leave the hidden state unchanged.
    """
    dtype = values.dtype

    def step(carry, inp):
        h, t_prev = carry
        t, x, m = inp
        if evolve is not None:
            ys, stats = solve(evolve, evolve.field, h, jnp.stack([t_prev, t]), throw=throw)
            h = ys[-1]
            features = jnp.concatenate([x * m, m])
        else:
            stats = zero_stats()
            features = jnp.concatenate([x * m, m, (t_prev - t)[None]])
        observed = jnp.any(m > 0)
        h = jnp.where(observed, cell(features, h), h)
        t_next = t if evolve is not None else jnp.where(observed, t, t_prev)
        return (h, t_next), stats

    init = (jnp.zeros(hidden_size, dtype), times[-1])
    (h, _), stats = jax.lax.scan(step, init, (times[::-1], values[::-1], mask[::-1]))
    return h, sum_stats(stats)


def _gaussian_loglik(values, pred, mask, obs_std: float):
    """Sum over observed entries of `log N(values; pred, obs_std²)`."""
    z = (values - pred) / obs_std
    logp = -0.5 * z**2 - math.log(obs_std) - 0.5 * math.log(2 * math.pi)
    return jnp.sum(mask * logp)


def _as_batch(owner: str, times, values, mask):
    """`(times, values, mask, times_axis)` with a leading batch axis on values/mask;
    `times` may be shared `(T,)` (axis None) or per sequence `(B, T)` (axis 0)."""
    values = jnp.asarray(values)
    times = jnp.asarray(times)
    mask = jnp.asarray(mask)
    if values.ndim == 2:
        values, mask = values[None], mask[None]
        times = times if times.ndim == 1 else times[None]
    if values.ndim != 3:
        raise InputError(
            f"{owner}: values must have shape (B, T, D) (or (T, D) for one sequence), got "
            f"{tuple(values.shape)}."
        )
    if times.ndim not in (1, 2):
        raise InputError(
            f"{owner}: times must have shape (T,) (shared) or (B, T), got {tuple(times.shape)}."
        )
    if mask.ndim not in (2, 3) or mask.shape[0] != values.shape[0]:
        raise InputError(
            f"{owner}: mask must have shape (B, T, D) or (B, T) to match values "
            f"{tuple(values.shape)}, got {tuple(mask.shape)}."
        )
    return times, values, mask, (None if times.ndim == 1 else 0)


# ----------------------------------------------------------------- latent ODE


class LatentODE(eqx.Module):
    """A latent ODE (Rubanova et al. 2019): an encoder run backwards in time over the
    irregular observations gives `q(z0) = N(mean, std²)` at the first observation time;
    the latent state follows `dz/dt = f(z)` (a `NeuralODE`); a decoder maps `z(t)` to the
    data.

    **Arguments:**

    - `data_size`: dimension `D` of an observation.
    - `latent_size`: dimension of `z` (default 4); `hidden_size`: the encoder's GRU state.
    - `width`, `depth`: the MLPs of the latent field (and the ODE-RNN's field).
    - `encoder`: `"ode_rnn"` (the hidden state flows by its own neural ODE between
      observations, Rubanova et al.) or `"gru"` (a GRU given the time gaps, as in Chen et
      al.'s latent ODE demo; no solves in the encoder).
    - `activation`: of the fields' MLPs (a name from `nodekit.ACTIVATIONS`).
    - `decoder_width`, `decoder_depth`: the decoder MLP (depth 0 = linear).
    - `settings`: the `nodekit.SolveSettings` of every solve (latent and ODE-RNN; default
      `LATENT_SETTINGS`: `rtol=1e-3`, `atol=1e-4`, `max_steps=1024`); keyword arguments
      `solver`, `rtol`, `atol`, `dt0`, `adjoint`, `max_steps`, `checkpoints`, `engine`
      override single settings.
    - `key`: a `jax.random.PRNGKey` (keyword only).

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    from nodekit.models import LatentODE, elbo

    times = jnp.linspace(0.0, 2.0, 6)
    values = jnp.sin(times)[None, :, None] * jnp.ones((3, 6, 2))   # (B, T, D)
    mask = jnp.ones((3, 6))
    model = LatentODE(2, latent_size=4, hidden_size=8, width=8, key=jax.random.PRNGKey(0))
    loss, aux = elbo(model, times, values, mask, jax.random.PRNGKey(1))
    pred, stats = model.predict(times, values[0], mask[0], jnp.linspace(0, 6, 20))
    ```
    """

    encoder_cell: eqx.nn.GRUCell
    encoder_ode: NeuralODE | None
    to_latent: eqx.nn.Linear
    ode: NeuralODE
    decoder: eqx.nn.MLP
    data_size: int = eqx.field(static=True)
    latent_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)
    encoder: str = eqx.field(static=True)

    def __init__(
        self,
        data_size: int,
        latent_size: int = 4,
        hidden_size: int = 25,
        width: int = 20,
        depth: int = 2,
        *,
        encoder: str = "ode_rnn",
        activation: str = "tanh",
        decoder_width: int = 20,
        decoder_depth: int = 1,
        settings: SolveSettings | None = None,
        key: PRNGKeyArray,
        **overrides,
    ):
        for name, value, low in (("data_size", data_size, 1), ("latent_size", latent_size, 1),
                                 ("hidden_size", hidden_size, 1), ("width", width, 1),
                                 ("depth", depth, 0), ("decoder_width", decoder_width, 1),
                                 ("decoder_depth", decoder_depth, 0)):
            check_int("LatentODE", name, value, low)
        check_choice("encoder", encoder, ENCODERS)
        settings = model_settings(LatentODE, LATENT_SETTINGS, settings, overrides)
        kc, ke, kl, kf, kd = jax.random.split(key, 5)
        extra = 1 if encoder == "gru" else 0
        self.encoder_cell = eqx.nn.GRUCell(2 * data_size + extra, hidden_size, key=kc)
        self.encoder_ode = (
            NeuralODE(MLPField(hidden_size, width, depth, activation=activation, key=ke), settings)
            if encoder == "ode_rnn" else None
        )
        self.to_latent = eqx.nn.Linear(hidden_size, 2 * latent_size, key=kl)
        self.ode = NeuralODE(MLPField(latent_size, width, depth, activation=activation, key=kf),
                             settings)
        self.decoder = eqx.nn.MLP(latent_size, data_size, decoder_width, decoder_depth,
                                  activation=get_activation(activation), key=kd)
        self.data_size = data_size
        self.latent_size = latent_size
        self.hidden_size = hidden_size
        self.encoder = encoder

    @property
    def settings(self) -> SolveSettings:
        """The solve settings of every solve (held by `ode`)."""
        return self.ode.settings

    def encode(self, times: Float[ArrayLike, " T"], values: Float[ArrayLike, "T D"],
               mask: Float[ArrayLike, "T *D"], *, throw: bool = True):
        """The approximate posterior of `z` at `times[0]` for one sequence.

        **Arguments:** `times (T,)`, `values (T, D)`, `mask (T, D)` or `(T,)`.

        **Returns:** `(mean, std, stats)`, each of `mean`/`std` of shape
        `(latent_size,)`; `stats` sums the encoder's solves (zero for `"gru"`).
        """
        times, values, mask = _check_sequence("LatentODE.encode", self.data_size, times,
                                              values, mask)
        h, stats = _encode_backwards(self.encoder_cell, self.encoder_ode, self.hidden_size,
                                     times, values, mask, throw)
        mean, logvar = jnp.split(self.to_latent(h), 2)
        return mean, jnp.exp(0.5 * logvar), stats

    def decode(self, z0: Float[ArrayLike, " latent"], ts: Float[ArrayLike, " times"], *,
               t0: Float[ArrayLike, ""] | None = None, throw: bool = True):
        """Decoded observations `(len(ts), D)` of the latent trajectory from `z0` at `t0`
        (default `ts[0]`), and the solve's stats."""
        if t0 is None:
            zs, stats = solve(self.ode, self.ode.field, z0, ts, throw=throw)
        else:
            zs, stats = solve_from(self.ode, self.ode.field, z0, t0, ts, throw=throw)
        return jax.vmap(self.decoder)(zs), stats

    def predict(self, obs_times, values, mask, pred_times, key=None, *, throw: bool = True):
        """Reconstruct or extrapolate one sequence at `pred_times` (all `>= obs_times[0]`).

        `key=None` decodes the posterior mean; with a key, one posterior sample.

        **Returns:** `(pred (len(pred_times), D), stats)` (encoder and decoder solves).
        """
        mean, std, enc = self.encode(obs_times, values, mask, throw=throw)
        z0 = mean if key is None else mean + std * jax.random.normal(key, mean.shape, mean.dtype)
        pred, dec = self.decode(z0, jnp.asarray(pred_times, values.dtype),
                                t0=jnp.asarray(obs_times)[0], throw=throw)
        return pred, add_stats(enc, dec)


def elbo(
    model: LatentODE,
    times,
    values,
    mask,
    key: jax.Array,
    *,
    obs_std: float = 0.3,
    kl_weight: float = 1.0,
    throw: bool = False,
) -> tuple[jax.Array, dict]:
    """The negative evidence lower bound of a latent ODE on a batch, averaged over the
    sequences:

    `-ELBO = -Σ_observed log N(x; decoder(z(t)), obs_std²) + kl_weight · KL(q(z0) ‖ N(0, I))`

    with one reparameterised sample `z0 ~ q(z0)` per sequence.

    **Arguments:**

    - `model`: a `LatentODE`.
    - `times`: `(T,)` shared by the batch, or `(B, T)`; `values`: `(B, T, D)`;
      `mask`: `(B, T, D)` or `(B, T)` (one sequence without the batch axis also works).
    - `key`: a PRNG key for the posterior samples.
    - `obs_std`: the fixed observation noise standard deviation.
    - `kl_weight`: weight of the KL term (1 is the ELBO; anneal it from 0 if you like).
    - `throw`: raise on a failed solve; default `False` counts failures in `aux`.

    **Returns:**

    `(loss, aux)`; `aux` holds scalars `log_likelihood` and `kl` (batch means), `mse`
    (mean squared error over the observed entries), `nfe` (mean forward NFE per sequence,
    encoder plus decoder), `nfe_encoder`, `nfe_decoder`, `solver_steps`, `failures`.

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    from nodekit.models import LatentODE, elbo

    times = jnp.linspace(0.0, 2.0, 6)
    values = jnp.sin(times)[None, :, None] * jnp.ones((3, 6, 2))   # (B, T, D)
    mask = jnp.ones((3, 6))
    model = LatentODE(2, 4, 8, 8, encoder="gru", key=jax.random.PRNGKey(0))
    loss, aux = elbo(model, times, values, mask, jax.random.PRNGKey(1), obs_std=0.3)
    ```
    """
    check_positive("elbo", "obs_std", obs_std)
    times, values, mask, t_axis = _as_batch("elbo", times, values, mask)
    keys = jax.random.split(key, values.shape[0])

    def one(t, x, m, k):
        t, x, m = _check_sequence("elbo", model.data_size, t, x, m)
        mean, std, enc = model.encode(t, x, m, throw=throw)
        z0 = mean + std * jax.random.normal(k, mean.shape, mean.dtype)
        pred, dec = model.decode(z0, t, throw=throw)
        loglik = _gaussian_loglik(x, pred, m, obs_std)
        kl = 0.5 * jnp.sum(mean**2 + std**2 - 1.0 - 2.0 * jnp.log(std))
        sq = jnp.sum(m * (x - pred) ** 2)
        return loglik, kl, sq, jnp.sum(m), enc, dec

    loglik, kl, sq, n_obs, enc, dec = jax.vmap(one, in_axes=(t_axis, 0, 0, 0))(
        times, values, mask, keys
    )
    loss = jnp.mean(-loglik + kl_weight * kl)
    aux = stats_aux(add_stats(enc, dec), values.shape[0])
    aux.update(
        log_likelihood=jnp.mean(loglik),
        kl=jnp.mean(kl),
        mse=jnp.sum(sq) / jnp.maximum(jnp.sum(n_obs), 1.0),
        nfe_encoder=jnp.mean(enc.nfe).astype(jnp.float32),
        nfe_decoder=jnp.mean(dec.nfe).astype(jnp.float32),
    )
    return loss, aux


# ----------------------------------------------------------------- RNN baseline


class RNNBaseline(eqx.Module):
    """A recurrent baseline for `LatentODE` with the same interface: a time-aware GRU run
    backwards over the observations (it sees each time gap `Δt`) encodes the sequence;
    an autoregressive, time-aware GRU decoder then steps through the prediction times,
    each step fed its previous prediction and the time gap, and reads out an observation.

    It solves nothing: its statistics report zero NFE.

    **Arguments:**

    - `data_size`: dimension `D` of an observation.
    - `hidden_size`: the GRUs' state; `width`: the readout MLP's hidden width.
    - `key`: a `jax.random.PRNGKey` (keyword only).

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    from nodekit.models import RNNBaseline, rnn_loss

    times = jnp.linspace(0.0, 2.0, 6)
    values = jnp.sin(times)[None, :, None] * jnp.ones((3, 6, 2))   # (B, T, D)
    mask = jnp.ones((3, 6))
    rnn = RNNBaseline(2, hidden_size=8, key=jax.random.PRNGKey(0))
    loss, aux = rnn_loss(rnn, times, values, mask)
    pred, _ = rnn.predict(times, values[0], mask[0], jnp.linspace(0, 6, 20))
    ```
    """

    encoder_cell: eqx.nn.GRUCell
    init: eqx.nn.Linear
    decoder_cell: eqx.nn.GRUCell
    readout: eqx.nn.MLP
    data_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)

    def __init__(self, data_size: int, hidden_size: int = 25, width: int = 20, *,
                 key: jax.Array):
        check_int("RNNBaseline", "data_size", data_size, 1)
        check_int("RNNBaseline", "hidden_size", hidden_size, 1)
        check_int("RNNBaseline", "width", width, 1)
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.encoder_cell = eqx.nn.GRUCell(2 * data_size + 1, hidden_size, key=k1)
        self.init = eqx.nn.Linear(hidden_size, hidden_size, key=k2)
        self.decoder_cell = eqx.nn.GRUCell(data_size + 1, hidden_size, key=k3)
        self.readout = eqx.nn.MLP(hidden_size, data_size, width, 1, activation=jnp.tanh, key=k4)
        self.data_size = data_size
        self.hidden_size = hidden_size

    def predict(self, obs_times, values, mask, pred_times, key=None, *, throw: bool = True):
        """Predict one sequence at `pred_times` (all `>= obs_times[0]`, increasing).

        `key` and `throw` are accepted for a common interface with `LatentODE`.

        **Returns:** `(pred (len(pred_times), D), stats)` with zero stats.
        """
        times, values, mask = _check_sequence("RNNBaseline.predict", self.data_size,
                                              obs_times, values, mask)
        h, _ = _encode_backwards(self.encoder_cell, None, self.hidden_size, times, values,
                                 mask, throw)
        h = jnp.tanh(self.init(h))
        pred_times = jnp.asarray(pred_times, values.dtype)

        def step(carry, t):
            h, x_prev, t_prev = carry
            h = self.decoder_cell(jnp.concatenate([x_prev, (t - t_prev)[None]]), h)
            x = self.readout(h)
            return (h, x, t), x

        init = (h, jnp.zeros(self.data_size, values.dtype), times[0])
        _, pred = jax.lax.scan(step, init, pred_times)
        return pred, zero_stats()


def rnn_loss(
    model: RNNBaseline,
    times,
    values,
    mask,
    key: jax.Array | None = None,
    *,
    obs_std: float = 0.3,
    throw: bool = False,
) -> tuple[jax.Array, dict]:
    """The Gaussian negative log-likelihood of `RNNBaseline`'s reconstruction, averaged
    over the sequences: comparable with `elbo` (the same likelihood, without the KL).

    **Arguments:** as in `elbo` (`key` is unused and may be `None`).

    **Returns:** `(loss, aux)` with the keys of `elbo`'s aux (`kl`, `nfe`, `failures`
    are zero).

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    from nodekit.models import RNNBaseline, rnn_loss

    times = jnp.linspace(0.0, 2.0, 6)
    values = jnp.sin(times)[None, :, None] * jnp.ones((3, 6, 2))   # (B, T, D)
    mask = jnp.ones((3, 6))
    loss, aux = rnn_loss(RNNBaseline(2, 8, 8, key=jax.random.PRNGKey(0)), times, values, mask)
    ```
    """
    check_positive("rnn_loss", "obs_std", obs_std)
    times, values, mask, t_axis = _as_batch("rnn_loss", times, values, mask)

    def one(t, x, m):
        t, x, m = _check_sequence("rnn_loss", model.data_size, t, x, m)
        pred, stats = model.predict(t, x, m, t, throw=throw)
        return _gaussian_loglik(x, pred, m, obs_std), jnp.sum(m * (x - pred) ** 2), jnp.sum(m), stats

    loglik, sq, n_obs, stats = jax.vmap(one, in_axes=(t_axis, 0, 0))(times, values, mask)
    aux = stats_aux(stats, values.shape[0])
    zero = jnp.zeros((), jnp.float32)
    aux.update(
        log_likelihood=jnp.mean(loglik),
        kl=zero,
        mse=jnp.sum(sq) / jnp.maximum(jnp.sum(n_obs), 1.0),
        nfe_encoder=zero,
        nfe_decoder=zero,
    )
    return jnp.mean(-loglik), aux


def predict(
    model: LatentODE | RNNBaseline,
    obs_times,
    values,
    mask,
    pred_times,
    key: jax.Array | None = None,
    *,
    throw: bool = True,
) -> tuple[jax.Array, SolveStats]:
    """Reconstruct/extrapolate sequences with a `LatentODE` or an `RNNBaseline`.

    **Arguments:**

    - `obs_times`, `values`, `mask`: one sequence (`(T,)`, `(T, D)`, `(T, D)|(T,)`) or a
      batch (`(T,)|(B, T)`, `(B, T, D)`, `(B, T, D)|(B, T)`).
    - `pred_times`: `(M,)` times at which to predict, all `>= obs_times[0]`.
    - `key`: `None` decodes the posterior mean; a key draws one posterior sample per
      sequence (ignored by `RNNBaseline`).

    **Returns:** `(pred, stats)`: `pred` of shape `(M, D)` or `(B, M, D)`.

    **Example:**

    ```python
    import jax
    import jax.numpy as jnp
    from nodekit.models import LatentODE, predict

    times = jnp.linspace(0.0, 2.0, 6)
    values = jnp.sin(times)[None, :, None] * jnp.ones((3, 6, 2))   # (B, T, D)
    mask = jnp.ones((3, 6))
    model = LatentODE(2, 4, 8, 8, encoder="gru", key=jax.random.PRNGKey(0))
    pred, stats = predict(model, times, values, mask, jnp.linspace(0.0, 4.0, 20))
    ```
    """
    if jnp.ndim(values) == 2:
        return model.predict(obs_times, values, mask, pred_times, key, throw=throw)
    obs_times, values, mask, t_axis = _as_batch("predict", obs_times, values, mask)
    keys = None if key is None else jax.random.split(key, values.shape[0])
    return jax.vmap(
        lambda t, x, m, k: model.predict(t, x, m, pred_times, k, throw=throw),
        in_axes=(t_axis, 0, 0, None if keys is None else 0),
    )(obs_times, values, mask, keys)
