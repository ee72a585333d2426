"""The official Sonata / Concerto demos as commands for your own scans.

    python -m concerto.demo pca        SCAN --checkpoint X --output DIR   # PCA colours: PLY + PNG
    python -m concerto.demo similarity SCAN --checkpoint X --output DIR --query x,y,z | --query-index i
    python -m concerto.demo segment    SCAN --head HEAD.pth [--checkpoint X] --output DIR
    python -m concerto.demo batch      SCAN_OR_DIR... --checkpoint X --output DIR   # .npy per scan
    python -m concerto.demo pca-video  SCAN --checkpoint X --output DIR   # turntable PNGs + GIF

One module per command (pca, similarity, segment, batch, video); reading scans
in ``scan``, inputs / normals / tiles / PCA in ``features``, shared flags in
``options``, picture annotations in ``figures``. ``--checkpoint`` is anything
``concerto.load`` takes, or ``random``.
"""
