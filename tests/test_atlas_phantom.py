"""The second phantom's fibre field (benchmarks/atlas_phantom.py): it judges the extraction, so
its fibres must run along its bundles, around bends, and fan where a bundle fans."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from atlas_phantom import _direction, _potential, _waves, carry_directions, reaches_source  # noqa: E402


def _field(domain, source, target):
    return _direction(_potential(domain, source, target), np.eye(3))


def test_fibres_follow_a_bent_tube_not_the_straight_line_from_its_source():
    # an L: up along z from the source, then along +x to the target
    dom = np.zeros((40, 12, 40), bool)
    dom[4:10, 3:9, 2:34] = True    # vertical limb, x 4..9
    dom[4:36, 3:9, 28:34] = True   # horizontal limb, z 28..33
    src = np.zeros_like(dom)
    src[4:10, 3:9, 2] = True
    tgt = np.zeros_like(dom)
    tgt[35, 3:9, 28:34] = True
    d = _field(dom, src, tgt)
    vertical = d[:, 5:9, 4:8, 6:22].reshape(3, -1)
    horizontal = d[:, 16:30, 4:8, 29:33].reshape(3, -1)
    assert np.median(np.abs(vertical[2])) > 0.97   # along z in the vertical limb
    assert np.median(np.abs(horizontal[0])) > 0.97  # along x in the horizontal one
    # the distance from the source would point straight from it, up and right at once
    assert np.median(np.abs(horizontal[2])) < 0.2


def test_fibres_fan_where_the_bundle_fans():
    # a wedge in x-z: 7 voxels wide at the bottom (source), about 50 at the top (target)
    x = np.arange(60)[:, None]
    z = np.arange(40)[None, :]
    wedge = np.abs(x - 30) <= 3 + 0.6 * z
    dom = np.repeat(wedge[:, None, :], 6, axis=1)
    src = np.zeros_like(dom)
    src[:, :, 0] = dom[:, :, 0]
    tgt = np.zeros_like(dom)
    tgt[:, :, 39] = dom[:, :, 39]
    d = _field(dom, src, tgt)
    k = 30
    edge = 30 + int(3 + 0.6 * k) - 2
    up = np.sign(d[2, :, 3, k])
    assert (d[0, edge, 3, k] * up[edge]) > 0.3        # right edge: up and to the right
    assert (d[0, 60 - edge, 3, k] * up[60 - edge]) < -0.3  # left edge: up and to the left
    assert abs(d[0, 30, 3, k]) < 0.1                   # the middle goes straight up


def test_fibre_directions_follow_the_deformation_of_their_bundle():
    """A subject's bundles are the atlas's, moved by a smooth warp; a fibre must still run along
    its moved bundle. Version 1 kept the atlas direction, across the bundle where the warp shears."""
    rng = np.random.default_rng(3)
    warp = [_waves(rng, 3, (0.8, 1.8), (60.0, 140.0)) for _ in range(3)]
    q = rng.uniform(-60, 60, size=(500, 3))
    phi = lambda p: p + np.stack([w(p) for w in warp], 1)  # noqa: E731
    eps = 1e-4
    jac_fd = np.stack([(phi(q + eps * e) - phi(q - eps * e)) / (2 * eps) for e in np.eye(3)], 2)
    jac = np.eye(3)[None] + np.stack([w.grad(q) for w in warp], 1)
    np.testing.assert_allclose(jac, jac_fd, atol=1e-6)
    d = rng.normal(size=(500, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    c = carry_directions(d, q, warp)
    # a step along the carried direction lands, after the warp, along the atlas direction
    step = phi(q + 0.01 * c) - phi(q)
    step /= np.linalg.norm(step, axis=1, keepdims=True)
    assert np.min(np.sum(step * d, axis=1)) > 0.9999
    # and the warp is not negligible: the uncarried directions are off by degrees
    off = np.degrees(np.arccos(np.clip(np.abs(np.sum(c * d, axis=1)), 0, 1)))
    assert np.percentile(off, 90) > 3.0


def test_fibres_solved_where_the_bundle_is_reach_its_source_and_those_of_its_outline_do_not():
    """Version 3: an L-shaped bundle inside a wider, fibreless outline (the atlas's low-probability
    fringe). Solved over the outline (versions 1 and 2), the fibres of the L's far limb cut the
    corner through the outline, where there are none, so no tracker could follow them to the
    source; solved over the bundle, they run along it."""
    bundle = np.zeros((40, 12, 40), bool)
    bundle[4:10, 3:9, 2:34] = True
    bundle[4:36, 3:9, 28:34] = True
    outline = np.zeros_like(bundle)
    outline[2:38, 1:11, 2:38] = True
    src = np.zeros_like(bundle)
    src[4:10, 3:9, 2] = True
    tgt = np.zeros_like(bundle)
    tgt[35, 3:9, 28:34] = True
    far = np.argwhere(bundle & (np.arange(40)[:, None, None] >= 20))
    fraction = bundle.astype(np.float32)
    at_source = lambda v: v[:, 2] <= 4.0  # noqa: E731
    shares = {}
    for name, domain in (("outline", outline), ("bundle", bundle)):
        d = _field(domain, src & domain, tgt & domain)
        shares[name] = reaches_source(fraction, d, np.eye(3), at_source, far).mean()
    assert shares["bundle"] > 0.9
    assert shares["outline"] < 0.5
    # with no gap to cross, the outline's field reaches the source too: the test is the gap
    d = _field(outline, src, tgt)
    assert reaches_source(outline.astype(np.float32), d, np.eye(3), at_source, far).mean() > 0.9
