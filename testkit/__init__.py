"""Support code for the tests and the benchmarks, never for the product.

Generators of small real inputs (dataset files in their real formats, stores,
scenes, a box-room video clip, an HM3D-like house) and a local Prefect
server/worker harness. Not shipped: ``[tool.setuptools.packages.find]`` leaves it
out. Tests find it through pytest's ``pythonpath = ["."]``; benchmarks put the
repo root on ``sys.path``. Import as ``from testkit.<module> import ...``.
"""
