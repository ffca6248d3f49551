"""gaia-cluster's Galactic-disc field simulator (``simulate --field disc``): the catalog it
writes, its field distances against an independent accept/reject draw, and a default fit
of a disc cone recovering the cluster's distance (the model's field is a different family).
"""

from __future__ import annotations

import json

import numpy as np
from astropy.table import Table
from scipy import stats

from astroinfer.pipelines import gaia_cluster as gc
from astroinfer.pipelines.gaia_cluster import disc_field


def test_disc_cone_catalog(tmp_path):
    record = gc.simulate(tmp_path / "disc.ecsv", seed=3, num_stars=800, field="disc")
    t = Table.read(tmp_path / "disc.ecsv")
    g = np.asarray(t["phot_g_mean_mag"])
    assert np.all((g > disc_field.G_BRIGHT) & (g < disc_field.G_LIMIT))
    np.testing.assert_allclose(np.asarray(t["parallax_error"]), gc.gaia_parallax_error(g), rtol=1e-6)
    assert record["field"] == "disc" and "field_scale" not in record["truth"]
    assert json.loads((tmp_path / "disc.truth.json").read_text())["truth"] == record["truth"]
    member = np.zeros(800, bool)
    member[record["member_rows"]] = True
    r = np.asarray(record["distance_pc"])
    # The field is spread over kiloparsecs (the thin disc's height along the line of sight
    # is 0.57 kpc at M67's latitude), the members at the cluster.
    assert 1000 < np.median(r[~member]) < 4000
    assert abs(np.median(r[member]) - 850) < 10


def _accept_reject_field(rng, n):
    """Field distances by a route independent of draw_field's inverse CDF: points uniform
    in the cone's volume out to 20 kpc, kept with probability density / max density, then
    kept when a star drawn from the luminosity function at that distance is visible."""
    out = []
    grid = np.geomspace(5, 20000, 4000)
    top = disc_field._density(grid).max()
    while sum(len(o) for o in out) < n:
        r = 20000.0 * rng.uniform(size=200000) ** (1 / 3)
        r = r[rng.uniform(size=r.size) < disc_field._density(r) / top]
        k = rng.choice(2, size=r.size, p=[0.8, 0.2])
        m = np.where(k == 0, rng.normal(4.5, 1.8, r.size), rng.normal(0.8, 0.8, r.size))
        g = m + 5 * np.log10(r / 10)
        out.append(r[(g < disc_field.G_LIMIT) & (g > disc_field.G_BRIGHT)])
    return np.concatenate(out)[:n]


def test_field_distances_match_an_independent_draw():
    rng = np.random.default_rng(11)
    r, g = disc_field.draw_field(rng, 4000)
    reference = _accept_reject_field(np.random.default_rng(12), 4000)
    assert stats.ks_2samp(r, reference).pvalue > 1e-3
    assert np.all((g > disc_field.G_BRIGHT) & (g < disc_field.G_LIMIT))


def test_default_fit_of_a_disc_cone_recovers_the_cluster(tmp_path, run_cli):
    import astroinfer

    truth = {"cluster_distance": 1200.0, "cluster_size": 10.0, "member_fraction": 0.25, "parallax_offset": 0.01}
    gc.simulate(tmp_path / "disc.ecsv", seed=8, num_stars=800, field="disc", truth=truth)
    code, _, err = run_cli("run", "gaia-cluster", tmp_path / "disc.ecsv", "-q", "-o", tmp_path / "disc.h5")
    assert code == 0, err
    d = np.asarray(astroinfer.load(tmp_path / "disc.h5").idata.posterior["cluster_distance"])
    assert abs(d.mean() - 1200.0) < 3 * d.std(), (d.mean(), d.std())
    # The error includes the offset's systematic: at 1.2 kpc 0.012 mas is about 17 pc.
    assert d.std() > 12.0
