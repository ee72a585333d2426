"""preprocess.geometry: rotations against scipy, look_at, project/unproject,
and the one depth-checked visibility test."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from preprocess import geometry as g


def test_rotations_match_scipy():
    rng = np.random.default_rng(1)
    for _ in range(5):
        rv = rng.normal(size=3)
        np.testing.assert_allclose(g.rotvec_to_matrix(rv), Rotation.from_rotvec(rv).as_matrix(), atol=1e-12)
        np.testing.assert_allclose(g.axis_angle_to_matrix(rv, 0.7), Rotation.from_rotvec(0.7 * rv / np.linalg.norm(rv)).as_matrix(), atol=1e-12)
        q = rng.normal(size=4)
        x, y, z, w = q / np.linalg.norm(q)
        ref = Rotation.from_quat([x, y, z, w]).as_matrix()
        np.testing.assert_allclose(g.quaternion_to_matrix([w, x, y, z]), ref, atol=1e-12)
        np.testing.assert_allclose(g.quaternion_to_matrix(3 * q[[1, 2, 3, 0]], scalar_first=False),
                                   g.quaternion_to_matrix(q), atol=1e-12)
    qs = rng.normal(size=(6, 4))
    for first in (True, False):
        back = g.matrix_to_quaternion(g.quaternion_to_matrix(qs, first), first)
        w = back[:, 0] if first else back[:, 3]
        assert (w >= 0).all()
        np.testing.assert_allclose(g.quaternion_to_matrix(back, first), g.quaternion_to_matrix(qs, first), atol=1e-12)
    assert g.rotvec_to_matrix(np.zeros(3)).tolist() == np.eye(3).tolist()


def test_orthonormalize_and_rotation_between():
    rng = np.random.default_rng(2)
    R = Rotation.random(4, random_state=3).as_matrix()
    noisy = R + 1e-4 * rng.normal(size=R.shape)
    out = g.orthonormalize(noisy)
    np.testing.assert_allclose(out @ np.swapaxes(out, 1, 2), np.broadcast_to(np.eye(3), (4, 3, 3)), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(out), 1.0)
    np.testing.assert_allclose(out, R, atol=1e-3)
    for a, b in [([1, 2, 3], [0, 0, 1]), ([0, 0, 1], [0, 0, -2]), ([1, 0, 0], [1, 0, 0])]:
        Rab = g.rotation_between(a, b)
        np.testing.assert_allclose(Rab @ (np.array(a) / np.linalg.norm(a)), np.array(b) / np.linalg.norm(b), atol=1e-12)


def test_look_at_is_opencv_and_sees_target():
    eye, target = np.array([2.0, -1.0, 1.5]), np.array([0.0, 0.5, 0.2])
    pose = g.look_at(eye, target)
    R = pose[:3, :3]
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    assert R[2, 1] < 0  # image down (camera +y) points down in the z-up world
    K = np.array([[100.0, 0, 50], [0, 100.0, 40], [0, 0, 1]])
    uv, z = g.project(target[None], K, pose)
    np.testing.assert_allclose(uv[0], [50, 40], atol=1e-9)
    assert z[0] == pytest.approx(np.linalg.norm(target - eye))
    # looking straight along up still gives a rotation
    down = g.look_at([0, 0, 5], [0, 0, 0])
    np.testing.assert_allclose(down[:3, 2], [0, 0, -1])
    np.testing.assert_allclose(down[:3, :3].T @ down[:3, :3], np.eye(3), atol=1e-12)


def test_unproject_inverts_project_with_skew():
    K = np.array([[80.0, 3.0, 31.5], [0, 90.0, 23.5], [0, 0, 1]])
    pose = g.look_at([1.0, 2.0, 1.0], [3.0, 0.0, 0.5])
    depth = np.random.default_rng(4).uniform(1, 5, (48, 64))
    depth[3, 5] = np.nan
    pts = g.unproject_depth(depth, K, pose)
    assert pts.shape == (48, 64, 3) and np.isnan(pts[3, 5]).all()
    uv, z = g.project(pts.reshape(-1, 3), K, pose)
    v, u = np.mgrid[0:48, 0:64]
    ok = np.isfinite(depth).reshape(-1)
    np.testing.assert_allclose(uv[ok], np.stack([u, v], -1).reshape(-1, 2)[ok], atol=1e-9)
    np.testing.assert_allclose(z[ok], depth.reshape(-1)[ok], rtol=1e-12)
    behind = g.project(np.array([[1.0, 2.0, 1.0]]) - 5 * pose[:3, 2], K, pose)[0]
    assert np.isnan(behind).all()


def test_depth_visibility_follows_the_eps_rule():
    """|D - z| < DEPTH_EPS (strict) at the pixel the point rounds to; invalid depth and
    out-of-image points are not seen."""
    assert g.DEPTH_EPS == 0.01
    K = np.array([[10.0, 0, 4.5], [0, 10.0, 3.5], [0, 0, 1]])
    pose = np.eye(4)
    depth = np.full((8, 10), 2.0)
    depth[0, 0] = np.nan
    # pixel (col 6, row 2) at z = 2 +/- offsets; pixel (0, 0) has no depth; one point outside
    offsets = [0.0, 0.009, -0.009, 0.011, -0.011]
    pts = [g.unproject(np.array([6.0, 2.0]), 2.0 + o, K, pose) for o in offsets]
    pts += [g.unproject(np.array([0.0, 0.0]), 2.0, K, pose), g.unproject(np.array([12.0, 2.0]), 2.0, K, pose)]
    vis, pix = g.depth_visibility(np.array(pts), K, pose, depth)
    assert vis.tolist() == [True, True, True, False, False, False, False]
    assert pix[0].tolist() == [6, 2] and pix[-1].tolist() == [-1, -1]
    assert g.depth_visibility(np.array(pts), K, pose, depth, eps=0.02)[0].tolist()[:5] == [True] * 5


def test_transform_points_and_poses_keep_projection():
    K = np.array([[50.0, 0, 20], [0, 50.0, 15], [0, 0, 1]])
    pose = g.look_at([0.5, -2, 1], [0, 0, 0.5])
    X = np.random.default_rng(5).normal(size=(20, 3)) * 0.3
    T = g.similarity(g.axis_angle_to_matrix([1, 0, 0], 0.3), [4, 5, 6], scale=2.5)
    uv0, z0 = g.project(X, K, pose)
    uv1, z1 = g.project(g.transform_points(T, X), K, g.transform_poses(T, pose[None])[0])
    np.testing.assert_allclose(uv1, uv0, atol=1e-9)
    np.testing.assert_allclose(z1, 2.5 * z0, rtol=1e-12)
    np.testing.assert_allclose(g.rigid_inverse(pose) @ pose, np.eye(4), atol=1e-12)
