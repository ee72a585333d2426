"""Video -> point cloud + per-view depth ("lifting").

- ``vggt_layers`` / ``vggt_heads`` / ``vggt_model``: our implementation of the
  VGGT-1B network (facebookresearch/vggt), loadable from the official checkpoint.
- ``geometry``: pure functions (pose encoding, unprojection, scale and floor
  alignment, normals, visibility between views).
- ``lifter``: the ``Lifter`` interface (``VGGTLifter``, ``GivenDepthLifter``) and
  ``scene_from_views``, which turns lifted views into a ``preprocess.scene.Scene``.
- ``preview``: PNG pictures of a lifted scene; ``synthetic``: a box-room clip
  with exact depth in the RealEstate10K layout (tests, benchmarks, demos).

The RealEstate10K adapter is ``preprocess.sources.re10k``.

Heavy modules (torch) are imported lazily by the callers, so importing this
package costs nothing.
"""
