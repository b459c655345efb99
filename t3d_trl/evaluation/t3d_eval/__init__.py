"""The folder of t3d-trl's ``evaluate`` metric module: ``evaluate.load`` reads ``t3d_eval.py`` from here (see
:mod:`t3d_trl.evaluation.metrics`). Nothing is imported from this package."""
