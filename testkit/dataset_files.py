"""Writers for tiny dataset fixtures in the datasets' real file formats, and the
known geometry the source tests check against.

The geometry: a camera with a non-trivial OpenCV camera-to-world pose looks at a
square plane perpendicular to its optical axis. The plane's centre X is chosen
to lie on pixel (U0, V0) at z-depth Z0, and X is also a mesh vertex (so it is a
point of the point cloud). Every pixel of the camera sees the plane at z = Z0.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

W, H = 32, 24
U0, V0 = 20, 9
Z0 = 2.5


def rotation(axis, angle) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


def make_pose(axis=(1, 2, 3), angle=0.7, t=(1.0, 2.0, 1.5)) -> np.ndarray:
    """OpenCV camera-to-world [4,4] float64."""
    T = np.eye(4)
    T[:3, :3] = rotation(axis, angle)
    T[:3, 3] = t
    return T


def make_K(fx=30.0, fy=28.0, cx=15.5, cy=11.5) -> np.ndarray:
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], float)


def known_point(pose: np.ndarray, K: np.ndarray, u=U0, v=V0, z=Z0) -> np.ndarray:
    """World point seen at pixel (u, v) with z-depth z."""
    x_cam = np.linalg.inv(K) @ np.array([u, v, 1.0]) * z
    return pose[:3, :3] @ x_cam + pose[:3, 3]


def project(frame_pose: np.ndarray, K: np.ndarray, X: np.ndarray) -> tuple[float, float, float]:
    """Our convention: world->camera = inv(pose), pixel = K @ X_cam."""
    w2c = np.linalg.inv(frame_pose.astype(np.float64))
    xc = w2c[:3, :3] @ X + w2c[:3, 3]
    p = K.astype(np.float64) @ xc
    return p[0] / p[2], p[1] / p[2], xc[2]


def plane_mesh(pose: np.ndarray, X: np.ndarray, half=3.0):
    """Square plane through X perpendicular to the camera's optical axis:
    4 corners + centre X (vertex 4), 4 triangles facing the camera."""
    R = pose[:3, :3]
    right, down = R[:, 0], R[:, 1]
    corners = [X + half * (sx * right + sy * down) for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    verts = np.array(corners + [X], float)
    faces = np.array([[4, 1, 0], [4, 2, 1], [4, 3, 2], [4, 0, 3]], np.int64)
    return verts, faces


def write_ply(path: Path, verts: np.ndarray, faces: np.ndarray | None = None, colors: np.ndarray | None = None,
              extra: dict | None = None, ascii: bool = False) -> None:
    """A real PLY: binary little endian (or ascii) vertex x,y,z float, optional
    red,green,blue uchar, extra per-vertex properties (name -> (ply type, array)),
    optional face list (uchar count, int indices)."""
    n = len(verts)
    props = [("x", "float", verts[:, 0]), ("y", "float", verts[:, 1]), ("z", "float", verts[:, 2])]
    if colors is not None:
        props += [("red", "uchar", colors[:, 0]), ("green", "uchar", colors[:, 1]), ("blue", "uchar", colors[:, 2])]
    for name, (ptype, arr) in (extra or {}).items():
        props.append((name, ptype, arr))
    head = ["ply", "format ascii 1.0" if ascii else "format binary_little_endian 1.0", f"element vertex {n}"]
    head += [f"property {t} {name}" for name, t, _ in props]
    if faces is not None:
        head += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    head.append("end_header")
    np_types = {"float": "<f4", "uchar": "u1", "ushort": "<u2", "int": "<i4", "uint": "<u4", "short": "<i2"}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(("\n".join(head) + "\n").encode())
        if ascii:
            for i in range(n):
                f.write((" ".join(str(np.asarray(a[i]).item()) for _, _, a in props) + "\n").encode())
            for face in faces if faces is not None else []:
                f.write(("3 " + " ".join(str(int(x)) for x in face) + "\n").encode())
            return
        rec = np.zeros(n, dtype=[(name, np_types[t]) for name, t, _ in props])
        for name, _, arr in props:
            rec[name] = arr
        f.write(rec.tobytes())
        if faces is not None:
            frec = np.zeros(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
            frec["n"] = 3
            frec["i"] = faces
            f.write(frec.tobytes())


def gradient_rgb(w=W, h=H, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.linspace(0, 255, w)[None, :]
    img[..., 1] = np.linspace(0, 255, h)[:, None]
    img[..., 2] = rng.integers(0, 255)
    return img


def jpeg_bytes(rgb: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_png16(path: Path, values: np.ndarray) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint16)).save(path)


def write_png_rgb(path: Path, rgb: np.ndarray) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def write_sens(path: Path, frames: list[dict], K_color: np.ndarray, K_depth: np.ndarray,
               color_size: tuple[int, int], depth_size: tuple[int, int], depth_shift: float = 1000.0,
               version: int = 4, color_compression: int = 2, depth_compression: int = 1) -> None:
    """ScanNet SensReader file (SensorData.py's layout). frames: dicts with pose
    [4,4] camera-to-world, rgb uint8 [H,W,3], depth_mm uint16 [h,w]; optional
    "color_bytes" / "depth_bytes" override the encoded payloads. Colour
    compression 0 raw, 1 png, 2 jpeg; depth compression 0 raw_ushort, 1 zlib_ushort."""
    def mat(K3):
        m = np.eye(4, dtype=np.float32)
        m[:3, :3] = K3
        return m.astype("<f4").tobytes()

    def encode_color(rgb):
        if color_compression == 0:
            return np.ascontiguousarray(rgb, np.uint8).tobytes()
        if color_compression == 1:
            import io

            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="PNG")
            return buf.getvalue()
        return jpeg_bytes(rgb)

    def encode_depth(d):
        raw = d.astype("<u2").tobytes()
        return raw if depth_compression == 0 else zlib.compress(raw)

    eye = np.eye(4, dtype="<f4").tobytes()
    out = bytearray()
    name = b"StructureSensor"
    out += struct.pack("<I", version) + struct.pack("<Q", len(name)) + name
    out += mat(K_color) + eye + mat(K_depth) + eye
    out += struct.pack("<ii", color_compression, depth_compression)
    out += struct.pack("<4I", color_size[1], color_size[0], depth_size[1], depth_size[0])
    out += struct.pack("<f", depth_shift)
    out += struct.pack("<Q", len(frames))
    for i, fr in enumerate(frames):
        c = fr.get("color_bytes") or encode_color(fr["rgb"])
        d = fr.get("depth_bytes") or encode_depth(fr["depth_mm"])
        out += np.asarray(fr["pose"], "<f4").tobytes()
        out += struct.pack("<4Q", 1000 * i, 1000 * i, len(c), len(d))
        out += c + d
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(bytes(out))


def build_sample(spec, store: str, note: str = "") -> dict:
    """Build every scene of a SourceSpec into ``store`` through the build path the
    flow runs (``run_build``); no scene may fail. Returns the store's first sample."""
    from pipelines.build import BuildOptions, SceneSettings, run_build
    from pipelines.store import ShardStore

    summary = run_build(BuildOptions.from_params(store=store, sources=[spec], min_correspondences=20, frame_gap=1,
                                                 shard_size=4, run_id=note or None))
    assert summary.quarantined == [], summary.quarantined
    sample = ShardStore.open(store)[0]
    assert len(sample["rgb"]) == 4 and all(len(c) > 0 for c in sample["corr_point"])
    return sample
