"""Self-distillation (Sonata) and cross-modal prediction (Concerto) pieces.

views / masking: per-sample view generation (numpy, loader workers);
matching: student-teacher point pairs; head: online clustering head;
sinkhorn: balanced assignments; losses: the loss terms; ema: teacher update;
cross_modal: patch predictor and term; pretrainer: student/teacher nets and the
weighted objective.
"""
