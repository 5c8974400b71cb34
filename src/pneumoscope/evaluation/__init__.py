"""Evaluation of a binary NORMAL/PNEUMONIA classifier: metrics and diagnostic plots.

* :mod:`pneumoscope.evaluation.metrics` -- the decision rule (:func:`predict_labels`),
  :func:`compute_metrics` and :func:`write_metrics_json`.
* :mod:`pneumoscope.evaluation.plots` -- confusion matrix, ROC, PR and reliability figures.
* :mod:`pneumoscope.evaluation.operating_point` -- the threshold, chosen on validation data.
* :mod:`pneumoscope.evaluation.calibration` -- temperature scaling and calibration error.
* :mod:`pneumoscope.evaluation.bootstrap` -- 95% confidence intervals of the headline metrics.

Class 0 is NORMAL and class 1 is PNEUMONIA (the positive class) throughout; every
probability is P(PNEUMONIA).
"""
