"""Writers of the folders Concerto's preprocessing scripts
(Pointcept ``pointcept/datasets/preprocessing/concerto/<dataset>/``) produce,
written from what those scripts do (file names, indices, matrices), not from
the adapter. Each returns the known cameras so a test can check pose and pixel.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from testkit import dataset_files as fx


def _save_jpg(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, format="JPEG", quality=95)


# --------------------------------------------------------------------------- ScanNet++


def write_concerto_scannetpp(root, scene="0a5c013435", split="train", frame_numbers=(7, 10, 120)):
    """concerto/scannetpp/preprocess_scannetpp.py: colour ``DSC<k>.JPG`` copied from
    dslr/undistorted_images; ``intrinsic/<i>.npy`` and ``pose/<i>.npy`` by the
    image's index i (numeric DSC order); the K is the undistorted camera moved to
    COLMAP's convention (+0.5 on cx, cy); the pose is camera-to-world (the inverse
    of COLMAP's world-to-camera), saved from a float32 tensor; correspondences are
    named by the image stem. Returns [(name, true OpenCV K, c2w pose, X)]."""
    cams = []
    pc = root / split / scene
    img = root / "images" / split / scene
    coords = []
    for i, k in enumerate(frame_numbers):
        pose = fx.make_pose(axis=(1, 2, 3 + i), angle=0.5 + 0.3 * i, t=(1.0 + i, 2.0, 1.5))
        K = fx.make_K(fx=30.0 + i, cx=15.5 + 0.25 * i)
        X = fx.known_point(pose, K)
        coords.append(X)
        cams.append((f"DSC{k:05d}", K, pose, X))
    pc.mkdir(parents=True)
    np.save(pc / "coord.npy", np.asarray(coords, np.float32))
    np.save(pc / "color.npy", np.full((len(coords), 3), 200, np.uint8))
    np.save(pc / "normal.npy", np.tile(np.float32([0, 0, 1]), (len(coords), 1)))
    for p in ("intrinsic", "pose", "correspondence"):
        (img / p).mkdir(parents=True)
    for i, (name, K, pose, _) in enumerate(cams):
        _save_jpg(img / "color" / f"{name}.JPG", fx.gradient_rgb(seed=i))
        K_colmap = K.copy()
        K_colmap[0, 2] += 0.5
        K_colmap[1, 2] += 0.5
        np.save(img / "intrinsic" / f"{i}.npy", K_colmap.astype(np.float32))
        np.save(img / "pose" / f"{i}.npy", pose.astype(np.float32))
        np.save(img / "correspondence" / f"{name}.npy", np.array([[fx.U0, fx.V0, i]], np.float64))
    return cams


# --------------------------------------------------------------------------- Structured3D

_Z2Y = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], np.float64)      # script's z2y_top_m
_CV_TO_LOCAL = np.array([[0, 0, 1], [0, -1, 0], [1, 0, 0]], np.float64)  # right-multiplied on camera points
_SWAP_YZ = np.array([[1, 0, 0], [0, 0, 1], [0, 1, 0]], np.float64)


def structured3d_camera_values(pose: np.ndarray, K_w2: np.ndarray) -> np.ndarray:
    """camera_pose.txt values (eye mm, towards, up, xfov, yfov half-angles) of an
    OpenCV camera-to-world pose in the Structured3D world (m); K with principal
    point (W/2, H/2) as Structured3D's parse_camera_info builds it."""
    eye = pose[:3, 3] * 1000.0
    towards, up = pose[:3, 2], -pose[:3, 1]
    xfov = np.arctan(K_w2[0, 2] / K_w2[0, 0])
    yfov = np.arctan(K_w2[1, 2] / K_w2[1, 1])
    return np.concatenate([eye, towards, up, [xfov, yfov, 1.0]])


def _script_view(values, depth_mm, w, h):
    """read_camera + the backprojection of parse_scene for one perspective view:
    (cam_r, cam_t, k, coord in the y-up world [h*w,3])."""
    cam_t = _Z2Y @ (values[:3] / 1000)
    front, up = values[3:6], values[6:9]
    cam_r = _Z2Y @ np.stack((front, up, np.cross(front, up)), axis=1)
    k = np.eye(3)
    k[0, 2], k[1, 2] = w / 2, h / 2
    k[0, 0], k[1, 1] = k[0, 2] / np.tan(values[9]), k[1, 2] / np.tan(values[10])
    pixel = np.transpose(np.indices((w, h)), (2, 1, 0)).reshape(-1, 2)
    pixel = np.hstack((pixel, np.ones((len(pixel), 1))))
    coord = depth_mm.reshape(-1, 1) * (np.linalg.inv(k) @ pixel.T).T
    coord = coord @ _CV_TO_LOCAL
    coord = (coord / 1000) @ cam_r.T + cam_t
    return cam_r, cam_t, k, coord


def write_concerto_structured3d(root, scene="scene_03001", room="room_7", split="val", empty_first_view=True):
    """concerto/structured3d/preprocess_structured3d.py for one room with three
    perspective views: view 0 loads but keeps no point (semantic all 0); colour,
    depth and correspondences 0, 1 are views 1 and 2, while K and pose 0, 1 are
    those of views 0 and 1 (the script indexes its list of every view that loaded
    with the kept views' numbers): view 2's camera is not saved. The point
    cloud is the union of the kept pixels (+ a small panorama), in the script's
    final world: the Structured3D world with x and y swapped. Saved pose:
    [[cam_r, cam_t], [0, 1]] @ (y/z swap). Returns [(colour name, OpenCV c2w pose in
    the Structured3D world, K with cx = W/2, X)] for the kept views."""
    W, H = fx.W, fx.H
    views = []
    for i in range(3):
        pose = fx.make_pose(axis=(0.3, 1.0, 0.2 + i), angle=0.4 + 0.2 * i, t=(1.0 + i, 2.0, 1.4))
        K = fx.make_K(fx=30.0, fy=28.0, cx=W / 2, cy=H / 2)
        views.append((pose, K))
    coords, colors, segments, corr_rows, Ks, Ts, kept = [], [], [], [], [], [], []
    for frame_id, (pose, K) in enumerate(views):
        values = structured3d_camera_values(pose, K)
        depth = np.full((H, W), int(fx.Z0 * 1000), np.uint16)
        semantic = np.zeros((H, W), np.uint8) if frame_id == 0 and empty_first_view else np.full((H, W), 5, np.uint8)
        rgb = fx.gradient_rgb(seed=frame_id)
        cam_r, cam_t, k, coord = _script_view(values, depth.astype(np.float64), W, H)
        mask = ((depth < 65535) & (semantic > 0)).reshape(-1)
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = cam_r, cam_t
        Ks.append(k)
        Ts.append(T)
        if mask.sum() > 0:
            pixel = np.transpose(np.indices((W, H)), (2, 1, 0)).reshape(-1, 2)
            corr_rows.append(np.hstack([pixel, np.full((len(pixel), 1), frame_id)])[mask])
            coords.append(coord[mask])
            colors.append(rgb.reshape(-1, 3)[mask])
            segments.append(semantic.reshape(-1)[mask])
            kept.append((frame_id, rgb, depth))
    # panorama (8x4, 1 m everywhere), camera at the first view's eye
    ph, pw = 4, 8
    a = (np.arange(pw) / pw * 2 * np.pi - np.pi)[None, :].repeat(ph, 0)
    b = (np.arange(ph) / ph * -np.pi + np.pi / 2)[:, None].repeat(pw, 1)
    pano = np.stack([np.cos(a) * np.cos(b), np.sin(b), np.sin(a) * np.cos(b)], -1).reshape(-1, 3)
    pano = pano + _Z2Y @ (views[0][0][:3, 3])
    coords.append(pano)
    colors.append(np.full((len(pano), 3), 9, np.uint8))
    segments.append(np.full(len(pano), 1, np.uint8))
    pano_pix = np.transpose(np.indices((pw, ph)), (2, 1, 0)).reshape(-1, 2)
    corr_rows.append(np.hstack([pano_pix, -np.ones((len(pano_pix), 1))]))

    coord = np.concatenate(coords) @ _SWAP_YZ
    Ts = np.stack(Ts) @ np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], np.float64)
    corr = np.concatenate(corr_rows).astype(np.int32)
    corr = np.concatenate([corr, np.arange(len(corr))[:, None]], 1)
    pc = root / split / scene / room
    pc.mkdir(parents=True)
    np.save(pc / "coord.npy", coord.astype(np.float32))
    np.save(pc / "color.npy", np.concatenate(colors).astype(np.uint8))
    np.save(pc / "normal.npy", np.tile(np.float32([0, 0, 1]), (len(coord), 1)))
    nyu = np.concatenate(segments)  # NYU40 5 (chair) and 1 (wall) -> the script's 25-class indices 4 and 0
    np.save(pc / "segment.npy", np.select([nyu == 5, nyu == 1], [4, 0], -1).astype(np.int16).reshape(-1, 1))
    img = root / "images" / split / scene / room
    for d in ("color/prsp", "correspondence/prsp_correspondence", "intrinsic", "pose", "depth/prsp",
              "color/pano", "correspondence/pano_correspondence"):
        (img / d).mkdir(parents=True, exist_ok=True)
    frame_ids = [f for f in np.unique(corr[:, 2]) if f != -1]
    for idx, (frame_id, rgb, depth) in enumerate(kept):
        Image.fromarray(rgb).save(img / "color" / "prsp" / f"{idx}.png")
        Image.fromarray(depth).save(img / "depth" / "prsp" / f"{idx}.png")
        rows = corr[corr[:, 2] == frame_ids[idx]][:, [0, 1, 3]]
        np.save(img / "correspondence" / "prsp_correspondence" / f"{idx}.npy", rows)
        np.save(img / "intrinsic" / f"{idx}.npy", Ks[idx])  # the script's index: shifted
        np.save(img / "pose" / f"{idx}.npy", Ts[idx])
    Image.fromarray(np.zeros((ph, pw, 3), np.uint8)).save(img / "color" / "pano" / "0.png")
    np.save(img / "correspondence" / "pano_correspondence" / "0.npy", corr[corr[:, 2] == -1][:, [0, 1, 3]])
    out = []
    for idx, (frame_id, _, _) in enumerate(kept):
        pose, K = views[frame_id]
        out.append((f"prsp/{idx}", pose, K, fx.known_point(pose, K)))
    # the colour image 0 is view 1, whose camera is pose/1.npy; colour 1 (view 2) has none
    return out


# --------------------------------------------------------------------------- S3DIS


def write_concerto_s3dis(root, area="Area_5", room="office_1", camera="0a1b2c", frames=(2, 10, 31)):
    """concerto/s3dis/preprocess_s3dis.py: point cloud under <root>/<area>/<room>;
    per 2D-3D-S camera, images/<area>/<room>/<camera>/ with the 2D-3D-S colour and
    depth files copied as they are (depth 1/512 m), ``intrinsic/<i>.npy`` the
    camera_k_matrix and ``pose/<i>.npy`` the camera_rt_matrix made 4x4
    (world-to-camera), i = index in frame-number order; correspondences named by
    the colour stem. Returns [(frame name, K, c2w pose, X)]."""
    pc = root / area / room
    img = root / "images" / area / room / camera
    cams = []
    for i, k in enumerate(frames):
        pose = fx.make_pose(axis=(1, 0.5, 2 + i), angle=0.3 + 0.2 * i, t=(0.5 * i, 1.0, 1.2))
        K = fx.make_K(fx=29.0 + i)
        cams.append((k, K, pose, fx.known_point(pose, K)))
    pc.mkdir(parents=True)
    np.save(pc / "coord.npy", np.asarray([c[3] for c in cams], np.float32))
    np.save(pc / "color.npy", np.full((len(cams), 3), 90, np.uint8))
    np.save(pc / "segment.npy", np.zeros((len(cams), 1), np.int16))
    np.save(pc / "instance.npy", np.arange(len(cams), dtype=np.int16).reshape(-1, 1))
    for d in ("color", "depth", "intrinsic", "pose", "correspondence"):
        (img / d).mkdir(parents=True)
    out = []
    for i, (k, K, pose, X) in enumerate(cams):
        stem = f"camera_{camera}_{room}_frame_{k}_domain"
        Image.fromarray(fx.gradient_rgb(seed=i)).save(img / "color" / f"{stem}_rgb.png")
        fx.write_png16(img / "depth" / f"{stem}_depth.png", np.full((fx.H, fx.W), int(fx.Z0 * 512), np.uint16))
        rt = np.linalg.inv(pose)[:3, :]
        T = np.eye(4)
        T[:3, :] = rt
        np.save(img / "intrinsic" / f"{i}.npy", K)
        np.save(img / "pose" / f"{i}.npy", T)
        np.save(img / "correspondence" / f"{stem}_rgb.npy", np.array([[fx.U0, fx.V0, i]], np.float64))
        out.append((f"{camera}/{stem}_rgb", K, pose, X))
    return out
