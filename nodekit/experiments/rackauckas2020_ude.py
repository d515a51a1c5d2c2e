"""`rackauckas2020-ude`: a universal differential equation learns the missing
interaction of Lotka–Volterra from sparse noisy data and extrapolates beyond it
(Rackauckas et al. 2020)."""

from __future__ import annotations

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._common import (
    Timer,
    check,
    claim,
    figure,
    fit,
    md_table,
    save,
    write_report,
)

NAME = "rackauckas2020-ude"
PAPER = ("Rackauckas, Ma, Martensen, Warner, Zubov, Supekar, Skinner, Ramadhan, Edelman "
         "2020, Universal Differential Equations for Scientific Machine Learning, Sec. 2.1")
CLAIM = "the UDE's network recovers the missing interaction and extrapolates past the data"

T_TRAIN, T_EXTRA = 3.0, 6.0
WIDTH, DEPTH, LR = 32, 2, 1e-2
SOLVE = dict(solver="tsit5", rtol=1e-6, atol=1e-6, max_steps=4096)
#: Basis of the sparse regression on the learned term (SINDy-style).
BASIS = ("1", "x", "y", "x^2", "xy", "y^2")


def _loss(model, batch, key):
    from ..models import trajectory_loss

    ts, y0, obs = batch
    return trajectory_loss(model, ts, y0, obs)


def _basis(states: np.ndarray) -> np.ndarray:
    x, y = states[:, 0], states[:, 1]
    return np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], 1)


def _stlsq(theta: np.ndarray, target: np.ndarray, threshold: float = 0.1, iters: int = 10):
    """Sequentially thresholded least squares (SINDy's regression), one column."""
    coef = np.linalg.lstsq(theta, target, rcond=None)[0]
    for _ in range(iters):
        small = np.abs(coef) < threshold
        coef[small] = 0.0
        big = ~small
        if big.any():
            coef[big] = np.linalg.lstsq(theta[:, big], target, rcond=None)[0]
    return coef


@eqx.filter_jit
def _trajectory(model, ts, y0):
    return model.solve(ts, y0, throw=False).ys


def _lbfgs(model, batch, iters: int):
    """Polish a trained model with L-BFGS on the full-batch loss (the paper's ADAM ->
    BFGS); returns `(model, loss history)`."""
    import optax

    params, static = eqx.partition(model, eqx.is_inexact_array)

    def value(p):
        return _loss(eqx.combine(p, static), batch, None)[0]

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(value)

    @eqx.filter_jit
    def step(p, state):
        v, g = value_and_grad(p, state=state)
        updates, state = opt.update(g, state, p, value=v, grad=g, value_fn=value)
        return optax.apply_updates(p, updates), state, v

    state = opt.init(params)
    history = []
    for _ in range(iters):
        params, state, v = step(params, state)
        history.append(float(v))
    return eqx.combine(params, static), np.asarray(history)


def _recovered_trajectory(coefs, alpha, delta, y0, ts):
    """Solve the recovered model `dx = αx + Θ(x, y)·c_1`, `dy = -δy + Θ(x, y)·c_2`
    (float64, SciPy); `nan` past a blow-up."""
    from scipy.integrate import solve_ivp

    def rhs(t, u):
        theta = _basis(np.asarray(u, dtype=np.float64)[None])[0]
        return [alpha * u[0] + theta @ coefs[:, 0], -delta * u[1] + theta @ coefs[:, 1]]

    sol = solve_ivp(rhs, (float(ts[0]), float(ts[-1])), np.asarray(y0, np.float64), t_eval=ts,
                    method="DOP853", rtol=1e-9, atol=1e-11)
    out = np.full((len(ts), 2), np.nan)
    out[: sol.y.shape[1]] = sol.y.T
    return out


def run(workdir: Path, quick: bool) -> Path:
    from .._fields import MLPField
    from .._neural_ode import NeuralODE
    from ..data import lotka_volterra
    from ..models import LotkaVolterraUDE, UDE

    workdir = Path(workdir)
    steps = 500 if quick else 2000
    bfgs_iters = 100 if quick else 500
    lv = lotka_volterra(t1=T_TRAIN, seed=0)
    ts_long, states_long = lv.extrapolate(T_EXTRA)
    n_train = len(lv.ts)
    batch = (jnp.asarray(lv.ts), jnp.asarray(lv.y0), jnp.asarray(lv.observations))
    key = jax.random.PRNGKey(0)
    ude = LotkaVolterraUDE(WIDTH, DEPTH, alpha=float(lv.params[0]), delta=float(lv.params[3]),
                           key=key, **SOLVE)
    # the physics-free baseline: the same network as the whole right-hand side
    node = UDE(lambda t, y, args: jnp.zeros_like(y), MLPField(2, WIDTH, DEPTH, key=key), **SOLVE)

    results, timings = {}, {}
    for name, model in (("UDE", ude), ("neural ODE", node)):
        with Timer() as t:
            res = fit(model, _loss, lambda s: batch, steps=steps, learning_rate=LR,
                      schedule="cosine", key=key)
            res.model, res.bfgs_history = _lbfgs(res.model, batch, bfgs_iters)
        results[name] = res
        timings[f"{name}: {steps} Adam + {bfgs_iters} L-BFGS steps (incl. compile)"] = t.s

    pred = {k: np.asarray(_trajectory(r.model, jnp.asarray(ts_long), jnp.asarray(lv.y0)))
            for k, r in results.items()}
    inside = slice(0, n_train)
    outside = slice(n_train, None)
    rmse = lambda a, b: float(np.sqrt(np.mean((a - b) ** 2)))
    err = {k: {"fit": rmse(p[inside], states_long[inside]),
               "extrapolation": rmse(p[outside], states_long[outside])} for k, p in pred.items()}
    scale = float(np.sqrt(np.mean(states_long[outside] ** 2)))

    # learned missing term along the true trajectory (the training window)
    window = states_long[inside]
    learned = np.asarray(jax.vmap(results["UDE"].model.missing_term)(jnp.asarray(window)))
    true_term = lv.interaction(window)
    term_err = float(np.linalg.norm(learned - true_term) / np.linalg.norm(true_term))
    theta = _basis(window.astype(np.float64))
    coefs = np.stack([_stlsq(theta, learned[:, i].astype(np.float64)) for i in range(2)], 1)
    beta_hat, gamma_hat = -coefs[BASIS.index("xy"), 0], coefs[BASIS.index("xy"), 1]
    beta, gamma = float(lv.params[1]), float(lv.params[2])
    others = float(np.abs(np.delete(coefs, BASIS.index("xy"), axis=0)).max())
    pred["recovered"] = _recovered_trajectory(coefs, float(lv.params[0]), float(lv.params[3]),
                                              lv.y0, ts_long)
    err["recovered"] = {"fit": rmse(pred["recovered"][inside], states_long[inside]),
                        "extrapolation": rmse(pred["recovered"][outside], states_long[outside])}

    fig, axes = figure(2, 1, size=(4.4, 3.3))
    ax = axes[0, 0]
    for i, lbl in enumerate(("prey x", "predator y")):
        ax.plot(ts_long, states_long[:, i], color=f"C{i}", lw=2.2, alpha=0.35, label=f"true {lbl}")
        ax.plot(ts_long, pred["UDE"][:, i], color=f"C{i}", lw=1.3, label=f"UDE {lbl}")
        ax.plot(ts_long, pred["neural ODE"][:, i], color=f"C{i}", lw=1.0, ls=":",
                label=f"neural ODE {lbl}")
        ax.plot(ts_long, pred["recovered"][:, i], color=f"C{i}", lw=1.0, ls="--",
                label=f"recovered {lbl}")
        ax.plot(lv.ts, lv.observations[:, i], ".", color=f"C{i}", ms=4)
    ax.axvspan(0, T_TRAIN, color="0.9", zorder=-1)
    ax.set_ylim(-0.5, 1.6 * float(states_long.max()))
    ax.set_xlabel("t (shaded: observed window)")
    ax.set_title("trajectories and extrapolation", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    ax = axes[0, 1]
    tw = ts_long[inside]
    for i, lbl in enumerate(("-βxy", "γxy")):
        ax.plot(tw, true_term[:, i], color=f"C{i}", lw=2.2, alpha=0.35, label=f"true {lbl}")
        ax.plot(tw, learned[:, i], color=f"C{i}", lw=1.3, ls="--", label=f"learned NN_{i + 1}")
    ax.set_xlabel("t")
    ax.set_title("missing term along the trajectory", fontsize=9)
    ax.legend(fontsize=7)
    figs = [save(fig, workdir / "ude.png")]

    claims = [
        claim("The UDE's network recovers the missing interaction (-βxy, γxy) along the data",
              "Fig. 2: the learned term matches the true interaction in the sampled region",
              f"relative L2 error of the learned term on the trajectory: {term_err:.3f}",
              check(term_err, "<", 0.1, "relative error")),
        claim("Sparse regression on the learned term recovers the interaction's form and "
              "coefficients (within 10%)",
              "Sec. 2.1: SINDy on the UDE's output recovers the exact equations",
              f"STLSQ on {{{', '.join(BASIS)}}}: β ≈ {beta_hat:.3f} (true {beta:g}), γ ≈ "
              f"{gamma_hat:.3f} (true {gamma:g}); largest other coefficient {others:.3f}",
              check(abs(beta_hat - beta) / beta, "<", 0.1, "β rel. error"),
              check(abs(gamma_hat - gamma) / gamma, "<", 0.1, "γ rel. error")),
        claim("The model recovered from the UDE (known physics + the sparse regression's "
              "terms) extrapolates beyond the training window far better than a "
              "physics-free neural ODE trained on the same data",
              "Fig. 2/3: the recovered equations' forecast follows the true dynamics; the "
              "pure NN's does not",
              f"RMSE on t in ({T_TRAIN:g}, {T_EXTRA:g}]: recovered "
              f"{err['recovered']['extrapolation']:.3f}, neural ODE "
              f"{err['neural ODE']['extrapolation']:.3f} (state RMS {scale:.2f}); the UDE's "
              f"network itself: {err['UDE']['extrapolation']:.3f}",
              check(err["recovered"]["extrapolation"], "<",
                    err["neural ODE"]["extrapolation"] / 2, "recovered", "neural ODE / 2")),
        claim("The recovered model's forecast error stays small (under 10% of the state's RMS)",
              "Fig. 3: accurate long-horizon forecast after symbolic recovery",
              f"recovered model's extrapolation RMSE {err['recovered']['extrapolation']:.3f} vs "
              f"state RMS {scale:.2f}",
              check(err["recovered"]["extrapolation"] / scale, "<", 0.1, "RMSE / RMS")),
    ]
    rows = [[k, f"{results[k].series('loss')[-1]:.4f}", f"{results[k].bfgs_history[-1]:.4f}",
             f"{err[k]['fit']:.4f}", f"{err[k]['extrapolation']:.4f}",
             f"{(results[k].train_s - results[k].first_step_s) / max(steps - 1, 1) * 1e3:.1f}"]
            for k in results]
    rows.append(["recovered (α x, -δ y known + STLSQ terms)", "", "", f"{err['recovered']['fit']:.4f}",
                 f"{err['recovered']['extrapolation']:.4f}", ""])
    table = md_table(["Model", "Training MSE after Adam", "after L-BFGS",
                      "RMSE on [0, 3] (clean)", f"RMSE on ({T_TRAIN:g}, {T_EXTRA:g}] (clean)",
                      "ms / Adam step"], rows)
    coef_table = md_table(["Term"] + list(BASIS),
                          [["NN_1 (true: -βxy)"] + [f"{c:.3f}" for c in coefs[:, 0]],
                           ["NN_2 (true: γxy)"] + [f"{c:.3f}" for c in coefs[:, 1]]])
    settings = {
        "data": f"Lotka–Volterra α, β, γ, δ = {', '.join(f'{p:g}' for p in lv.params)}, "
                f"u0 = ({lv.y0[0]:.3f}, {lv.y0[1]:.3f}), {n_train} observations on [0, {T_TRAIN:g}], "
                "Gaussian noise 5% of each coordinate's mean (the paper's)",
        "UDE": f"dx = αx + NN_1(x, y), dy = -δy + NN_2(x, y); NN: MLP {DEPTH}x{WIDTH} tanh; "
               "α, δ known and fixed",
        "neural ODE": "dx, dy = NN(x, y) (same MLP, no physics)",
        "solver": f"tsit5, rtol = atol = {SOLVE['rtol']:g}, backprop through the solver",
        "training": f"MSE to the noisy observations, Adam lr {LR:g} with cosine decay for "
                    f"{steps} full-batch steps, then {bfgs_iters} L-BFGS steps "
                    "(optax.lbfgs, zoom line search), u0 known; the same for both models",
        "recovered model": "dx = αx + Θ(x, y)·c_1, dy = -δy + Θ(x, y)·c_2 with the STLSQ "
                           "coefficients, solved from u0 (SciPy DOP853)",
        "sparse regression": "STLSQ (threshold 0.1) of the learned term, sampled on the true "
                             "trajectory in the window, on the basis " + ", ".join(BASIS),
    }
    notes = [
        "The paper trains with ADAM followed by BFGS and uses an RBF network; here Adam "
        "(cosine decay) followed by L-BFGS, and a tanh MLP. Adam alone stalls on a plateau "
        "(training MSE ~2.7e-3, above the noise floor) with the learned term ~50% off; the "
        "L-BFGS polish is what brings it close.",
        "The network itself is only trained where the data are: outside the sampled region "
        "it does not extrapolate (see the UDE row), which is why the paper extrapolates "
        "with the symbolically recovered equations; the claims do the same.",
        "The paper's SINDy step uses a larger polynomial library with its own "
        "thresholding; a 6-term quadratic basis with STLSQ is the small analogue.",
        "Extrapolation is from the true u0 over [0, 6], i.e. twice the observed window "
        "(the paper forecasts further, to t = 10 and beyond, after symbolic recovery).",
    ]
    if quick:
        notes.append(f"Quick mode trains {steps} Adam + {bfgs_iters} L-BFGS steps; the "
                     "learned term is less accurate than in the full run.")
    metrics = {"rmse": err, "state_rms_extrapolation": scale, "learned_term_rel_error": term_err,
               "stlsq_coefficients": {"basis": list(BASIS), "NN_1": coefs[:, 0], "NN_2": coefs[:, 1]},
               "beta_hat": beta_hat, "gamma_hat": gamma_hat,
               "final_loss": {k: {"adam": float(r.series("loss")[-1]),
                                  "lbfgs": float(r.bfgs_history[-1])} for k, r in results.items()}}
    return write_report(
        workdir, name=NAME, title="rackauckas2020-ude: Lotka–Volterra UDE", paper=PAPER,
        quick=quick, claims=claims, settings=settings, notes=notes, figures=figs,
        metrics=metrics, tables=[("Measured", table), ("Sparse regression of the learned term",
                                                       coef_table)],
        timings=timings,
        batch_mode="one trajectory per step (no batch; a single solve per loss)",
    )
