"""gaia-cluster's ``systematics="gp"``: the offset as a Gaussian-process field over the sky
(:mod:`astroinfer.pipelines.gaia_cluster.systematics`). The kernel against the published
value, its projected-process basis against the kernel itself, the model's density against
the global-offset model, the option checks, and (slow) the distance error it gives against
the error the kernel predicts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from astroinfer.errors import InputError
from astroinfer.pipelines import gaia_cluster as gc
from astroinfer.pipelines.gaia_cluster import systematics as sy

from test_gaia_cluster import DEMO, _nuts


def _cone(rng, num, radius_deg, ra=132.846, dec=11.814):
    """Positions uniform in a cone of ``radius_deg`` about (ra, dec)."""
    r = radius_deg * np.sqrt(rng.uniform(size=num))
    angle = rng.uniform(0, 2 * np.pi, num)
    d = dec + r * np.sin(angle)
    return ra + r * np.cos(angle) / np.cos(np.radians(d)), d


def _kernel_by_angle(ra, dec):
    """V(theta_ij) from the separations computed by spherical trigonometry."""
    v = sy.unit_vectors(ra, dec)
    theta = np.degrees(np.arccos(np.clip(v @ v.T, -1.0, 1.0)))
    return np.asarray(sy.parallax_covariance_mas2(theta), dtype=float)


def test_covariance_at_zero_separation_is_the_published_value():
    # Maiz Apellaniz et al. (2021), abstract: V(0) = 106.2 micro-arcsec^2, 10.3 micro-arcsec.
    assert float(sy.parallax_covariance_mas2(0.0)) == pytest.approx(106.2e-6, rel=1e-4)
    assert np.sqrt(float(sy.parallax_covariance_mas2(0.0))) * 1e3 == pytest.approx(10.3, abs=0.05)
    # The tinygp kernel on unit vectors is the same function of their angle.
    ra, dec = np.array([10.0, 10.0, 10.0]), np.array([0.0, 0.3, 2.0])
    with __import__("jax").enable_x64(True):
        k = np.asarray(sy.AngularParallaxCovariance()(sy.unit_vectors(ra, dec), sy.unit_vectors(ra, dec)))
    np.testing.assert_allclose(k, _kernel_by_angle(ra, dec), rtol=1e-5)  # arccos near 1: ~1e-5
    assert k[0, 0] > k[0, 1] > k[0, 2] > 0


@pytest.mark.parametrize("radius", [0.5, 2.0])
def test_offset_field_basis_reproduces_the_covariance_over_a_cone(radius):
    """Phi Phi^T against V(theta_ij) over stars of a cone: within 3% of V(0) for M67's 0.5
    degree (nodes 0.1 degree apart), 6% for 2 degrees (the grid is capped, so coarser)."""
    ra, dec = _cone(np.random.default_rng(1), 400, radius)
    basis = sy.offset_field_basis(ra, dec)
    exact = _kernel_by_angle(ra, dec)
    error = np.abs(basis.stars @ basis.stars.T - exact).max() / exact[0, 0]
    assert error < (0.03 if radius < 1 else 0.06), error
    assert basis.num_nodes <= sy.MAX_NODES and basis.stars.shape[1] < basis.num_nodes
    np.testing.assert_allclose(basis.captured, np.diag(basis.stars @ basis.stars.T) / exact[0, 0], rtol=1e-5)
    # The field at the mean position has about the kernel's V(0) as its prior variance.
    assert float(basis.centre @ basis.centre) == pytest.approx(exact[0, 0], rel=0.05)


def test_model_with_a_uniform_offset_field_is_the_global_offset_model():
    """A rank-1 basis whose rows are all c shifts every member by c u: the model's density is
    then the global-offset model's at parallax_offset = c u, with u's Normal(0, 1) prior in
    place of the offset's Normal(0, 0.012)."""
    from numpyro.infer.util import log_density

    data = gc.with_field_components(gc.load(DEMO).data)
    c = 0.009
    field = {**data, "offset_basis": np.full((data["parallax"].size, 1), c, np.float32),
             "offset_centre_basis": np.array([c], np.float32)}
    weights = np.full((1, len(gc.FIELD_SCALES_PC)), 1.0 / len(gc.FIELD_SCALES_PC))
    params = {"cluster_distance": 845.0, "cluster_size": 12.0, "member_fraction": 0.35, "field_weights": weights}
    for u in (-1.3, 0.4):
        with_field, trace = log_density(gc.model, (), field, {**params, "offset_field": np.array([u])})
        assert float(trace["parallax_offset"]["value"]) == pytest.approx(c * u, rel=1e-5)
        global_, _ = log_density(gc.model, (), data, {**params, "parallax_offset": c * u})
        prior_change = stats.norm.logpdf(u) - stats.norm.logpdf(c * u, 0.0, gc.OFFSET_PRIOR_SD)
        assert float(with_field) == pytest.approx(float(global_) + prior_change, abs=0.02)


def test_systematics_gp_needs_the_systematic_offset(run_cli):
    with pytest.raises(InputError, match="systematics=gp needs offset systematic"):
        gc.load(DEMO, systematics="gp", offset="fit")
    loaded = gc.load(DEMO, systematics="gp")
    assert loaded.data["offset_basis"].shape[0] == loaded.data["parallax"].size
    assert loaded.metadata["systematics"] == "gp" and loaded.metadata["offset_field_rank"] >= 5
    code, out, err = run_cli("run", "gaia-cluster", "--systematics", "gp", "--offset", "off", "-q")
    assert code == 2 and "systematics=gp needs offset systematic" in err and "Traceback" not in err


@pytest.mark.slow
def test_offset_field_widens_the_distance_error_as_its_kernel_predicts():
    """On a simulated cone (no offset applied), the distance's posterior sd with the offset
    field is sqrt(sd_off^2 + (D^2 / 1000)^2 Var(mean offset)), where Var(mean offset) =
    w^T V w / (sum w)^2 over the likely members with precision weights w: the kernel's
    variance of the offset the members share, which the field adds and --offset off leaves
    out. The global offset (prior sd 0.012 mas, more than V(0) = 0.0103^2 and no fall-off
    across the cone) gives the widest error."""
    loaded = gc.load(DEMO, systematics="gp")
    field = gc.with_field_components(loaded.data)
    off = gc.with_field_components(gc.load(DEMO, offset="off").data)
    glob = gc.with_field_components(gc.load(DEMO).data)
    sd = {}
    for name, data in (("off", off), ("gp", field), ("global", glob)):
        draws = _nuts(gc.model, data, 3, 300, 400, True)
        sd[name] = float(np.asarray(draws["cluster_distance"]).std())
        if name == "off":
            distance = float(np.asarray(draws["cluster_distance"]).mean())
            stars = gc.star_conditionals({k: np.asarray(v) for k, v in draws.items()}, data["parallax"],
                                         data["parallax_error"], field_group=data["field_group"])
    members = stars["membership"] > 0.5
    spread = 1000.0 * 12.0 / distance**2  # the members' true-parallax spread (mas), demo size 12 pc
    w = 1.0 / (np.asarray(loaded.data["parallax_error"], float)[members] ** 2 + spread**2)
    ra, dec = loaded.stars["ra"][members], loaded.stars["dec"][members]
    shared = float(w @ _kernel_by_angle(ra, dec) @ w / w.sum() ** 2)
    predicted = np.hypot(sd["off"], distance**2 / 1000.0 * np.sqrt(shared))
    assert sd["gp"] == pytest.approx(predicted, rel=0.15), (sd, predicted)
    assert sd["off"] < 0.5 * sd["gp"] and sd["gp"] < sd["global"]
