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
#: The UDE's network: the paper's size (2 -> 5 -> 5 -> 5 -> 2; tanh here, RBF there).
UDE_WIDTH, UDE_DEPTH = 5, 3
#: The physics-free baseline's network (wider: a flexible right-hand side).
WIDTH, DEPTH = 32, 2
LR = 1e-2
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


@eqx.filter_jit
def _full_loss(model, batch):
    return _loss(model, batch, None)[0]


def _lbfgs(model, batch, iters: int, key):
    """Fine-tune a trained model with the library's `lbfgs` optimiser (L-BFGS with a
    zoom line search) on the full-batch loss, as the paper's ADAM -> BFGS; returns the
    `FitResult` (its `series("loss")` is the loss before each step)."""
    return fit(model, _loss, lambda s: batch, steps=iters, learning_rate=1.0,
               optimizer="lbfgs", key=key)


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
    from ..data import lotka_volterra
    from ..models import UDE, LotkaVolterraUDE, count_params

    workdir = Path(workdir)
    steps = 500 if quick else 2000
    bfgs_iters = 100 if quick else 1000
    lv = lotka_volterra(t1=T_TRAIN, seed=0)
    ts_long, states_long = lv.extrapolate(T_EXTRA)
    n_train = len(lv.ts)
    # the MSE of the noise itself: the true model's training loss (u0 is known)
    noise_mse = float(np.mean((lv.observations - lv.states) ** 2))
    batch = (jnp.asarray(lv.ts), jnp.asarray(lv.y0), jnp.asarray(lv.observations))
    key = jax.random.PRNGKey(0)
    ude = LotkaVolterraUDE(UDE_WIDTH, UDE_DEPTH, alpha=float(lv.params[0]),
                           delta=float(lv.params[3]), key=key, **SOLVE)
    # the physics-free baseline: the same network as the whole right-hand side
    node = UDE(lambda t, y, args: jnp.zeros_like(y), MLPField(2, WIDTH, DEPTH, key=key), **SOLVE)

    results, timings = {}, {}
    for name, model in (("UDE", ude), ("neural ODE", node)):
        with Timer() as t:
            res = fit(model, _loss, lambda s: batch, steps=steps, learning_rate=LR,
                      schedule="cosine", key=key)
            res.adam_loss = float(_full_loss(res.model, batch))
            polish = _lbfgs(res.model, batch, bfgs_iters, key)
            res.model = polish.model
            res.lbfgs_loss = float(_full_loss(res.model, batch))
            res.linesearch_steps = float(np.mean(polish.series("linesearch_steps")))
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
    rows = [[k, f"{results[k].adam_loss:.5f}", f"{results[k].lbfgs_loss:.5f}",
             f"{err[k]['fit']:.4f}", f"{err[k]['extrapolation']:.4f}",
             f"{(results[k].train_s - results[k].first_step_s) / max(steps - 1, 1) * 1e3:.1f}"]
            for k in results]
    rows.append(["recovered (α x, -δ y known + STLSQ terms)", "", "", f"{err['recovered']['fit']:.4f}",
                 f"{err['recovered']['extrapolation']:.4f}", ""])
    rows.append(["true model (the noise alone)", f"{noise_mse:.5f}", f"{noise_mse:.5f}",
                 "0", "0", ""])
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
        "UDE": f"dx = αx + NN_1(x, y), dy = -δy + NN_2(x, y); NN: MLP 2 -> "
               f"{' -> '.join([str(UDE_WIDTH)] * UDE_DEPTH)} -> 2 tanh (the paper's size); "
               "α, δ known and fixed",
        "neural ODE": f"dx, dy = NN(x, y), MLP 2 -> {' -> '.join([str(WIDTH)] * DEPTH)} -> 2 "
                      "tanh (wider: no physics to lean on)",
        "solver": f"tsit5, rtol = atol = {SOLVE['rtol']:g}, backprop through the solver",
        "training": f"MSE to the noisy observations, Adam lr {LR:g} with cosine decay for "
                    f"{steps} full-batch steps, then {bfgs_iters} steps of nodekit's `lbfgs` "
                    "optimiser (optax.lbfgs, memory 10, zoom line search; "
                    f"{results['UDE'].linesearch_steps:.1f} line-search evaluations per "
                    "step for the UDE), u0 known; the same for both models",
        "recovered model": "dx = αx + Θ(x, y)·c_1, dy = -δy + Θ(x, y)·c_2 with the STLSQ "
                           "coefficients, solved from u0 (SciPy DOP853)",
        "sparse regression": "STLSQ (threshold 0.1) of the learned term, sampled on the true "
                             "trajectory in the window, on the basis " + ", ".join(BASIS),
    }
    ude_res = results["UDE"]
    notes = [
        "The paper trains with ADAM followed by BFGS and uses an RBF network 2 -> 5 -> 5 -> "
        "5 -> 2; here Adam (cosine decay) followed by L-BFGS (`optimizer: {name: lbfgs}`), "
        "and a tanh MLP of the same size. Adam ends at training MSE "
        f"{ude_res.adam_loss:.5f}, L-BFGS at {ude_res.lbfgs_loss:.5f}; the noise alone has "
        f"MSE {noise_mse:.5f}, so a fit below that is fitting the noise, and the learned "
        "term then carries it.",
        "The network size matters more than the optimiser here: this experiment's earlier "
        "setting, a 2x32 MLP (1218 parameters) with Adam and 500 L-BFGS steps, gave a "
        "learned term 14% off and a sparse regression with γ ≈ 1.14 (true 0.8) and a "
        "spurious coefficient of 0.28; the paper-sized network "
        f"({count_params(ude.ode.field.neural)} parameters) fits close to the noise floor "
        "and its regression keeps only the xy terms.",
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
               "noise_mse": noise_mse,
               "final_loss": {k: {"adam": r.adam_loss, "lbfgs": r.lbfgs_loss}
                              for k, r in results.items()}}
    return write_report(
        workdir, name=NAME, title="rackauckas2020-ude: Lotka–Volterra UDE", paper=PAPER,
        quick=quick, claims=claims, settings=settings, notes=notes, figures=figs,
        metrics=metrics, tables=[("Measured", table), ("Sparse regression of the learned term",
                                                       coef_table)],
        timings=timings,
        batch_mode="one trajectory per step (no batch; a single solve per loss)",
    )
