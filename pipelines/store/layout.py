"""The on-disk layout of one shard (a zarr v3 group), in one place.

A shard packs complete scenes; a scene never spans shards. Arrays are the
concatenation over the shard's scenes (points, images, correspondences,
image groups, stored as ``segments``) with offset tables to find one scene's or one image's rows::

    points/coord     float32 [P,3]  metres, world frame
    points/color     uint8   [P,3]
    points/normal    float32 [P,3]
    points/segment   int32   [P]    -1 = unlabelled (or no labels at all)
    points/instance  int32   [P]
    scenes/point_offset   int64 [S+1]
    scenes/image_offset   int64 [S+1]
    scenes/segment_offset int64 [S+1]
    images/rgb_<H>x<W>    uint8 [n,H,W,3]  one chunk per image (ragged sizes
                                           are grouped by size)
    images/size_group     int32 [I]   which rgb_<H>x<W> array holds image i
    images/size_slot      int32 [I]   row of image i in that array
    images/K              float32 [I,3,3]
    images/pose           float32 [I,4,4] camera-to-world, OpenCV axes
    images/corr_offset    int64 [I+1]
    corr/point            int32 [C]   point index within its scene
    corr/pixel            uint16 [C,2] (u = column, v = row)
    segments/scene        int32 [G]   scene index within the shard
    segments/images       int32 [G,4] image index within the shard, -1 padded

The ``segments`` group and ``scenes/segment_offset`` hold the image groups (G
rows of up to 4 frames): the code calls them image groups and keeps ``segment``
for per-point semantic labels (``points/segment``); the on-disk names below stay
as written, so stores written before the rename read unchanged.

Group attributes: ``format``, ``scenes`` (per-scene JSON metadata, in order),
``image_sizes`` ([[H, W], ...] naming the rgb_<H>x<W> arrays).

``inventory.json`` (written last, so its presence means the shard is complete)
lists every other file with its size and blake2b digest; the manifest holds the
inventory's digest. Chunks are split along the first axis only and every chunk
is written (no implicit fill-value chunks), so a missing file always means
damage and local reads can go straight to the chunk files
(``pipelines.store.fastread``). Codecs: blosc-zstd for images, byte-shuffled
blosc-lz4 for everything else, then crc32c on every chunk (checked on every
read, by zarr or by the direct reader).
"""
from __future__ import annotations

# 2: every chunk ends with a crc32c (zarr's codec). 1: no checksums; such a
# store is read-only until `concerto-store --migrate` rewrites it.
SHARD_FORMAT = "concerto-shard/2"
READABLE_SHARD_FORMATS = ("concerto-shard/1", SHARD_FORMAT)
MAX_VIEWS = 4

# on-disk names of the image groups (the store format calls them "segments")
IMAGE_GROUP_GROUP = "segments"                      # zarr group
IMAGE_GROUP_SCENE = "scene"                         # segments/scene
IMAGE_GROUP_IMAGES = "images"                       # segments/images
IMAGE_GROUP_SCENE_ARRAY = f"{IMAGE_GROUP_GROUP}/{IMAGE_GROUP_SCENE}"
IMAGE_GROUP_IMAGES_ARRAY = f"{IMAGE_GROUP_GROUP}/{IMAGE_GROUP_IMAGES}"
IMAGE_GROUP_OFFSET = "segment_offset"               # scenes/segment_offset
IMAGE_GROUP_OFFSET_ARRAY = f"scenes/{IMAGE_GROUP_OFFSET}"
# per-scene keys in the shard's ``scenes`` attribute and in manifest scene entries
ATTR_IMAGE_GROUP_WIDTH = "segment_width"
ATTR_N_IMAGE_GROUPS = "n_segments"
# per-source count key of a manifest's ``sources`` summary
COUNT_IMAGE_GROUPS = "segments"

POINT_ARRAYS = ("coord", "color", "normal", "segment", "instance")
# rows per zarr chunk: 64 Ki points = 768 KiB of coords; a scene read touches
# at most two partial chunks, and chunks are sharded into one file per array.
POINT_CHUNK = 1 << 16
# zarr's per-chunk overhead (~0.2-0.3 ms of CPU) outweighs decoding a 64 Ki-row
# lz4 chunk (~0.3 ms), so smaller chunks for the per-image ranges were slower.
CORR_CHUNK = 1 << 16


def rgb_array_name(h: int, w: int) -> str:
    return f"rgb_{h}x{w}"
