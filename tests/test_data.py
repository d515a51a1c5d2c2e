"""Tests of `nodekit.data`: shapes, determinism, splits, and the invariants of each set."""

from __future__ import annotations

import numpy as np
import pytest

import nodekit
import nodekit.data as data


# --------------------------------------------------------------------------- fixtures
# Each nodekit solve compiles once (about a second); share them across the module.


@pytest.fixture(scope="module")
def spiral():
    return data.ode_demo_spiral()


@pytest.fixture(scope="module")
def lv():
    return data.lotka_volterra(seed=0)


def _rows(x, y) -> list[bytes]:
    """The examples as a sorted list of bytes, to compare data sets as multisets."""
    x = x.reshape(len(x), -1)
    return sorted(xi.tobytes() + yi.tobytes() for xi, yi in zip(x, y))


# --------------------------------------------------------------------------- ode_demo


def test_ode_demo_shapes(spiral):
    ts, ys = spiral
    assert ts.shape == (1000,) and ys.shape == (1000, 2)
    assert ts.dtype == np.float32 and ys.dtype == np.float32
    assert ts[0] == 0 and ts[-1] == pytest.approx(25.0)
    np.testing.assert_array_equal(ys[0], data.ODE_DEMO_Y0)
    assert data.ODE_DEMO_A.dtype == data.ODE_DEMO_Y0.dtype == np.float32
    np.testing.assert_array_equal(data.ODE_DEMO_A, np.float32([[-0.1, 2.0], [-2.0, -0.1]]))
    np.testing.assert_array_equal(data.ODE_DEMO_Y0, [2.0, 0.0])
    assert np.all(np.isfinite(ys))


def test_ode_demo_satisfies_its_ode(spiral):
    ts, ys = spiral
    y = ys.astype(np.float64)
    dt = float(ts[1] - ts[0])
    # fourth-order central difference at interior points
    dydt = (-y[4:] + 8 * y[3:-1] - 8 * y[1:-3] + y[:-4]) / (12 * dt)
    field = (y[2:-2] ** 3) @ data.ODE_DEMO_A.astype(np.float64)
    scale = np.abs(field).max()
    assert np.abs(dydt - field).max() < 1e-2 * scale
    # and the spiral decays towards the origin
    assert np.linalg.norm(ys[-1]) < 0.6 * np.linalg.norm(ys[0])


def test_ode_demo_cached_copies(spiral):
    ts, ys = data.ode_demo_spiral(n_points=1000, t1=25.0)
    np.testing.assert_array_equal(ys, spiral[1])
    ys[:] = 0.0  # the caller owns its copy; the cache is untouched
    np.testing.assert_array_equal(data.ode_demo_spiral()[1], spiral[1])


@pytest.mark.parametrize(
    "kwargs, word",
    [({"n_points": 1}, "n_points"), ({"n_points": 10.0}, "n_points"), ({"t1": -1.0}, "t1"),
     ({"t1": float("nan")}, "t1")],
)
def test_ode_demo_bad_args(kwargs, word):
    with pytest.raises(nodekit.InputError, match=word):
        data.ode_demo_spiral(**kwargs)


# --------------------------------------------------------------------------- latent spirals


def test_latent_spirals_shapes():
    train, test = data.latent_spirals(50, n_points=40, n_obs=10, seed=0)
    assert (len(train), len(test)) == (40, 10)
    for s in (train, test):
        n = len(s)
        assert s.ts.shape == (40,) and s.ts.dtype == np.float32
        assert s.trajectories.shape == s.observations.shape == (n, 40, 2)
        assert s.trajectories.dtype == s.observations.dtype == np.float32
        assert s.mask.shape == (n, 40) and s.mask.dtype == bool
        assert s.clockwise.shape == (n,) and s.clockwise.dtype == bool
        assert s.start_phase.shape == (n,) and s.start_phase.dtype == np.float32
        assert s.obs_end == 20


def test_latent_spirals_observation_convention():
    s = data.latent_spirals(
        200, n_points=60, n_obs=12, noise_std=0.2, test_fraction=0.0, seed=3
    ).train
    assert len(s) == 200
    np.testing.assert_array_equal(s.mask.sum(axis=1), 12)  # n_obs per spiral
    assert not s.mask[:, s.obs_end :].any()  # the tail is held out
    assert np.all(s.observations[~s.mask] == 0.0)
    # the sampling is irregular: the observed times differ between spirals
    assert len({row.tobytes() for row in s.mask}) > 190
    residual = (s.observations - s.trajectories)[s.mask]
    assert residual.std() == pytest.approx(0.2, rel=0.1)
    assert abs(residual.mean()) < 0.02


def test_latent_spirals_geometry():
    s = data.latent_spirals(100, test_fraction=0.0, seed=1).train
    z = s.start_phase[:, None].astype(np.float64) + s.ts[None, :]
    radius = np.linalg.norm(s.trajectories, axis=-1)
    np.testing.assert_allclose(radius, data.SPIRAL_A + data.SPIRAL_B * z, rtol=1e-5)
    lo, hi = data.SPIRAL_START_PHASE
    assert np.all((s.start_phase >= lo) & (s.start_phase <= hi))
    # the direction label is the sign of the angular velocity x y' - y x'
    x, y = s.trajectories[..., 0], s.trajectories[..., 1]
    cross = x[:, :-1] * y[:, 1:] - y[:, :-1] * x[:, 1:]
    np.testing.assert_array_equal(np.all(cross < 0, axis=1), s.clockwise)
    np.testing.assert_array_equal(np.all(cross > 0, axis=1), ~s.clockwise)
    assert 0.3 < s.clockwise.mean() < 0.7


def test_latent_spirals_determinism_and_split():
    a = data.latent_spirals(60, seed=5)
    b = data.latent_spirals(60, seed=5)
    c = data.latent_spirals(60, seed=6)
    for f in ("trajectories", "observations", "mask", "clockwise"):
        np.testing.assert_array_equal(getattr(a.train, f), getattr(b.train, f))
        np.testing.assert_array_equal(getattr(a.test, f), getattr(b.test, f))
    assert not np.array_equal(a.train.observations, c.train.observations)
    full = data.latent_spirals(60, seed=5, test_fraction=0.0).train
    phases = np.concatenate([a.train.start_phase, a.test.start_phase])
    np.testing.assert_array_equal(np.sort(phases), np.sort(full.start_phase))
    assert len(np.unique(phases)) == 60  # disjoint
    # stratified by direction
    assert abs(a.test.clockwise.mean() - full.clockwise.mean()) < 0.1


def test_latent_spirals_bad_args():
    with pytest.raises(nodekit.InputError, match="n_obs=60"):
        data.latent_spirals(10, n_points=100, n_obs=60)
    with pytest.raises(nodekit.InputError, match="obs_fraction"):
        data.latent_spirals(10, obs_fraction=0.0)
    with pytest.raises(nodekit.InputError, match="noise_std"):
        data.latent_spirals(10, noise_std=-0.1)
    with pytest.raises(nodekit.InputError, match="n_samples"):
        data.latent_spirals(0)


# --------------------------------------------------------------------------- toy 2-D


@pytest.mark.parametrize("name", data.TOY2D_NAMES)
def test_toy2d_shapes_and_determinism(name):
    x = data.sample_toy2d(name, 2001, seed=0)
    assert x.shape == (2001, 2) and x.dtype == np.float32
    np.testing.assert_array_equal(x, data.sample_toy2d(name, 2001, seed=0))
    assert not np.array_equal(x, data.sample_toy2d(name, 2001, seed=1))
    # FFJORD's scale: essentially all of the mass in [-4.5, 4.5]^2, and spread out
    assert np.mean(np.all(np.abs(x) < 4.5, axis=1)) > 0.99
    assert np.all(x.std(axis=0) > 0.5)


def test_toy2d_names():
    assert set(data.TOY2D_NAMES) == {
        "8gaussians", "checkerboard", "2spirals", "pinwheel", "circles", "moons"
    }
    assert set(data.TOY2D_DENSITY_NAMES) >= {"8gaussians"}


def test_eight_gaussians_mixture():
    x = data.sample_toy2d("8gaussians", 40000, seed=2).astype(np.float64)
    centres = data.eight_gaussians_centres()
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 4 / 1.414)
    nearest = np.argmin(((x[:, None, :] - centres) ** 2).sum(-1), axis=1)
    np.testing.assert_allclose(np.bincount(nearest, minlength=8) / len(x), 1 / 8, atol=0.01)
    for k in range(8):
        cluster = x[nearest == k]
        np.testing.assert_allclose(cluster.mean(axis=0), centres[k], atol=0.02)
        np.testing.assert_allclose(cluster.std(axis=0), data.EIGHT_GAUSSIANS_STD, rtol=0.05)
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=0.05)


@pytest.mark.parametrize("name", data.TOY2D_DENSITY_NAMES)
def test_toy2d_density_normalised_and_matches_samples(name):
    # integrates to one (midpoint rule on a fine grid)
    edges = np.linspace(-6.0, 6.0, 601)
    h = edges[1] - edges[0]
    mid = (edges[:-1] + edges[1:]) / 2
    grid = np.stack(np.meshgrid(mid, mid, indexing="ij"), axis=-1)
    p = np.exp(data.toy2d_log_density(name, grid).astype(np.float64))
    assert p.shape == (600, 600)
    assert p.sum() * h * h == pytest.approx(1.0, abs=2e-3)
    # the sampler draws from this density: compare probabilities of coarse bins
    x = data.sample_toy2d(name, 100_000, seed=0)
    assert np.all(np.isfinite(data.toy2d_log_density(name, x)))
    counts, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=12, range=[[-6, 6], [-6, 6]])
    coarse = p.reshape(12, 50, 12, 50).sum(axis=(1, 3)) * h * h
    np.testing.assert_allclose(counts / len(x), coarse, atol=4e-3)


def test_toy2d_log_density_value():
    # at a centre: the own component dominates; the neighbours are ~4 std devs away
    centre = data.eight_gaussians_centres()[0]
    s2 = data.EIGHT_GAUSSIANS_STD**2
    d2 = ((data.eight_gaussians_centres() - centre) ** 2).sum(-1)
    expected = np.log(np.mean(np.exp(-d2 / (2 * s2)) / (2 * np.pi * s2)))
    assert data.toy2d_log_density("8gaussians", centre) == pytest.approx(expected, rel=1e-6)
    lp = data.toy2d_log_density("8gaussians", np.zeros((3, 4, 2)))
    assert lp.shape == (3, 4) and lp.dtype == np.float32


def test_toy2d_errors():
    with pytest.raises(nodekit.InputError, match="did you mean '8gaussians'"):
        data.sample_toy2d("8gaussian", 10)
    with pytest.raises(nodekit.InputError, match="did you mean 'checkerboard'"):
        data.toy2d_log_density("chekerboard", np.zeros((1, 2)))
    with pytest.raises(nodekit.InputError, match="no closed-form density"):
        data.toy2d_log_density("moons", np.zeros((1, 2)))
    with pytest.raises(nodekit.InputError, match=r"\(\.\.\., 2\)"):
        data.toy2d_log_density("8gaussians", np.zeros((5, 3)))
    with pytest.raises(nodekit.InputError, match="n must be an integer"):
        data.sample_toy2d("moons", 0)


# --------------------------------------------------------------------------- ANODE


def test_anode_g1d():
    x, y = data.anode_g1d()
    np.testing.assert_array_equal(x, [[1.0], [-1.0]])
    np.testing.assert_array_equal(y, [-1.0, 1.0])
    assert x.dtype == y.dtype == np.float32


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_concentric_spheres_labels_match_radii(dim):
    train, test = data.concentric_spheres(1000, dim=dim, seed=0)
    assert (len(train), len(test)) == (800, 200)
    for s in (train, test):
        assert s.x.shape == (len(s), dim) and s.y.shape == (len(s),)
        assert s.x.dtype == s.y.dtype == np.float32
        r = np.linalg.norm(s.x.astype(np.float64), axis=1)
        inner = s.y == -1
        assert set(np.unique(s.y)) == {-1.0, 1.0}
        assert np.all(r[inner] <= 0.5 + 1e-6)
        assert np.all((r[~inner] >= 1.0 - 1e-6) & (r[~inner] <= 1.5 + 1e-6))
        assert inner.sum() == len(s) // 2  # balanced, in both parts
    x = np.concatenate([train.x, test.x])
    y = np.concatenate([train.y, test.y])
    assert len(np.unique(x, axis=0)) == 1000  # disjoint


def test_concentric_spheres_uniform_in_volume():
    train, _ = data.concentric_spheres(20000, dim=2, r1=1.0, r2=2.0, r3=3.0,
                                       test_fraction=0.0, seed=4)
    r = np.linalg.norm(train.x, axis=1)
    inner = r[train.y == -1]
    outer = r[train.y == 1]
    assert np.mean(inner < 0.5) == pytest.approx(0.25, abs=0.02)  # area ratio
    assert np.mean(outer < 2.5) == pytest.approx((2.5**2 - 4) / (9 - 4), abs=0.02)


def test_concentric_spheres_determinism_and_errors():
    a, b = data.concentric_spheres(100, seed=1), data.concentric_spheres(100, seed=1)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    assert not np.array_equal(a.train.x, data.concentric_spheres(100, seed=2).train.x)
    with pytest.raises(nodekit.InputError, match="r1 < r2 < r3"):
        data.concentric_spheres(100, r1=1.0, r2=0.5)
    with pytest.raises(nodekit.InputError, match="dim"):
        data.concentric_spheres(100, dim=0)


# --------------------------------------------------------------------------- Lotka–Volterra


def test_lotka_volterra_shapes(lv):
    assert lv.ts.shape == (31,) and lv.states.shape == lv.observations.shape == (31, 2)
    for a in (lv.ts, lv.states, lv.observations, lv.params, lv.y0, lv.noise_scale):
        assert a.dtype == np.float32
    np.testing.assert_allclose(lv.ts, np.arange(31) * 0.1, atol=1e-6)
    np.testing.assert_allclose(lv.params, [1.3, 0.9, 0.8, 1.8])
    np.testing.assert_allclose(lv.states[0], [0.44249296, 4.6280594])
    assert np.all(lv.states > 0)


def test_lotka_volterra_conserves_invariant(lv):
    alpha, beta, gamma, delta = lv.params.astype(np.float64)
    x, y = lv.states.astype(np.float64).T
    v = gamma * x - delta * np.log(x) + beta * y - alpha * np.log(y)
    assert np.ptp(v) < 1e-4 * abs(v[0])
    np.testing.assert_allclose(lv.invariant(lv.states), v, rtol=1e-6)
    # the longer trajectory extends the observed one and stays on the same level set
    ts, states = lv.extrapolate(12.0)
    assert ts.shape == (121,) and states.shape == (121, 2)
    np.testing.assert_allclose(states[:31], lv.states, rtol=1e-5, atol=1e-6)
    v_long = lv.invariant(states).astype(np.float64)
    assert np.ptp(v_long) < 1e-4 * abs(v[0])
    # a full oscillation: the prey population turns around within [0, 12]
    assert states[:, 0].max() > 3 * states[:, 0].min()


def test_lotka_volterra_field_split(lv):
    # finite-difference derivative = linear part + interaction terms
    ts, states = lv.ts.astype(np.float64), lv.states.astype(np.float64)
    dt = ts[1] - ts[0]
    alpha, _, _, delta = lv.params.astype(np.float64)
    dydt = (-states[4:] + 8 * states[3:-1] - 8 * states[1:-3] + states[:-4]) / (12 * dt)
    s = states[2:-2]
    field = np.stack([alpha * s[:, 0], -delta * s[:, 1]], axis=1) + lv.interaction(s)
    np.testing.assert_allclose(dydt, field, atol=2e-3 * np.abs(field).max())


def test_lotka_volterra_noise(lv):
    np.testing.assert_allclose(lv.noise_scale, 0.05 * lv.states.mean(axis=0), rtol=1e-5)
    z = (lv.observations - lv.states) / lv.noise_scale
    assert 0.6 < z.std() < 1.4
    again = data.lotka_volterra(seed=0)
    np.testing.assert_array_equal(again.observations, lv.observations)
    other = data.lotka_volterra(seed=1)
    np.testing.assert_array_equal(other.states, lv.states)
    assert not np.array_equal(other.observations, lv.observations)
    clean = data.lotka_volterra(noise=0.0)
    np.testing.assert_array_equal(clean.observations, clean.states)


@pytest.mark.parametrize(
    "kwargs, word",
    [({"alpha": -1.0}, "alpha"), ({"y0": (1.0, -2.0)}, "y0"), ({"y0": (1.0,)}, "y0"),
     ({"n_obs": 1}, "n_obs"), ({"noise": -0.1}, "noise"), ({"t1": 0.0}, "t1")],
)
def test_lotka_volterra_bad_args(kwargs, word):
    with pytest.raises(nodekit.InputError, match=word):
        data.lotka_volterra(**kwargs)


# --------------------------------------------------------------------------- digits


def test_digits_shapes_and_split():
    train, test = data.digits(seed=0)
    assert (len(train), len(test)) == (1438, 359)
    for s in (train, test):
        assert s.x.shape == (len(s), 1, 8, 8) and s.x.dtype == np.float32
        assert s.y.dtype == np.int32
        assert s.x.min() >= 0 and s.x.max() <= 1
    assert train.x.max() == 1.0
    full = data.digits(test_fraction=0.0).train
    assert len(full) == 1797
    assert _rows(np.concatenate([train.x, test.x]), np.concatenate([train.y, test.y])) == _rows(
        full.x, full.y
    )


def test_digits_stratified():
    full = data.digits(test_fraction=0.0).train
    class_counts = np.bincount(full.y, minlength=10)
    test = data.digits(seed=3, test_fraction=0.25).test
    per_class = np.bincount(test.y, minlength=10)
    exact = 0.25 * class_counts * (len(test) / (0.25 * len(full)))
    assert np.all(np.abs(per_class - exact) < 1)
    assert per_class.sum() == round(0.25 * 1797)


def test_digits_determinism():
    a, b, c = data.digits(seed=0), data.digits(seed=0), data.digits(seed=1)
    np.testing.assert_array_equal(a.test.x, b.test.x)
    np.testing.assert_array_equal(a.test.y, b.test.y)
    assert not np.array_equal(a.test.x, c.test.x)


# --------------------------------------------------------------------------- splits and batches


def test_split_indices():
    labels = np.repeat(np.arange(3), [50, 30, 20])
    train, test = data.split_indices(100, test_fraction=0.3, seed=0, labels=labels)
    assert len(test) == 30 and len(train) == 70
    assert np.intersect1d(train, test).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(100))
    np.testing.assert_array_equal(np.bincount(labels[test]), [15, 9, 6])
    again = data.split_indices(100, test_fraction=0.3, seed=0, labels=labels)
    np.testing.assert_array_equal(again[1], test)
    other = data.split_indices(100, test_fraction=0.3, seed=1, labels=labels)
    assert not np.array_equal(other[1], test)
    train, test = data.split_indices(7, test_fraction=0.0, seed=0)
    assert len(test) == 0 and len(train) == 7


@pytest.mark.parametrize(
    "kwargs, word",
    [({"n": 10, "test_fraction": 1.0}, r"\[0, 1\)"), ({"n": 3, "test_fraction": 0.1}, "empty test"),
     ({"n": 10, "test_fraction": 0.2, "labels": np.zeros(9)}, "labels"),
     ({"n": 10, "test_fraction": 0.2, "seed": -1}, "seed")],
)
def test_split_indices_errors(kwargs, word):
    kwargs.setdefault("seed", 0)
    with pytest.raises(nodekit.InputError, match=word):
        data.split_indices(**kwargs)


def test_batch_indices_epochs():
    n, bs = 103, 10
    epoch0 = [data.batch_indices(7, step, n, bs) for step in range(10)]
    for b in epoch0:
        assert b.shape == (bs,) and b.dtype == np.int64
        assert len(np.unique(b)) == bs and b.min() >= 0 and b.max() < n
    seen = np.concatenate(epoch0)
    assert len(np.unique(seen)) == 100  # one epoch: no index repeats
    epoch1 = np.concatenate([data.batch_indices(7, step, n, bs) for step in range(10, 20)])
    assert len(np.unique(epoch1)) == 100 and not np.array_equal(seen, epoch1)
    assert not np.array_equal(data.batch_indices(8, 0, n, bs), epoch0[0])


def test_batch_indices_resume_is_exact():
    steps = range(0, 45)
    straight = [data.batch_indices(0, s, 64, 16) for s in steps]
    # a "resumed" run asks for the steps from 30 on, and another run asks out of order
    for s in list(steps[30:]) + list(reversed(steps)):
        np.testing.assert_array_equal(data.batch_indices(0, s, 64, 16), straight[s])
    # callers may modify what they get without changing later draws
    straight[0][:] = -1
    assert data.batch_indices(0, 0, 64, 16).min() >= 0


@pytest.mark.parametrize(
    "args, word",
    [((0, 0, 10, 11), "batch_size"), ((0, -1, 10, 2), "step"), ((-3, 0, 10, 2), "seed"),
     ((0, 0, 10, 0), "batch_size"), ((1.5, 0, 10, 2), "seed")],
)
def test_batch_indices_errors(args, word):
    with pytest.raises(nodekit.InputError, match=word):
        data.batch_indices(*args)


@pytest.mark.parametrize(
    "call",
    [lambda s: data.sample_toy2d("moons", 10, seed=s), lambda s: data.digits(seed=s),
     lambda s: data.latent_spirals(10, seed=s), lambda s: data.concentric_spheres(10, seed=s)],
)
@pytest.mark.parametrize("seed", [-1, 1.0, True, "0"])
def test_bad_seeds(call, seed):
    with pytest.raises(nodekit.InputError, match="seed must be a non-negative integer"):
        call(seed)


def test_streams_are_independent():
    # the same seed gives unrelated numbers to different generators (and to batches)
    a = data.sample_toy2d("checkerboard", 50, seed=0)
    b = data.sample_toy2d("circles", 50, seed=0)
    assert not np.allclose(np.sort(np.abs(a[:, 0])), np.sort(np.abs(b[:, 0])))
    perm = data.batch_indices(0, 0, 50, 50)
    split_test = data.split_indices(50, test_fraction=0.5, seed=0)[1]
    assert not np.array_equal(np.sort(perm[:25]), split_test)
