"""Stacking and calibration: many members' OOF log-probabilities in, one calibrated prediction out.

Every estimator here has the scikit-learn shape: ``fit(logp, labels)`` then
``predict_proba(logp)``, where ``logp`` is (rows, members, 3) log-probabilities and ``labels``
(rows, 3) label distributions (soft labels allowed).
"""
