"""Reviewing the model's candidates: decisions per rater, training labels from them, agreement.

- :mod:`~deepmir_tasks.review.decisions`: a ``deepmir run`` output's subjects and their candidates
  (kept and dropped lesions), and the rater's decisions (``sub-X_desc-review_lesions.tsv`` + JSON
  sidecar), saved atomically after every decision;
- :mod:`~deepmir_tasks.review.export`: decisions -> an annotation dseg (1 CMB, 2 iron) on the raw
  T2w grid, where ``deepmir train`` reads it (extents from the dseg, the probability maps or grown
  from the images);
- :mod:`~deepmir_tasks.review.agreement`: two raters' lesion-wise agreement (Cohen's kappa,
  each one's sensitivity against the other);
- :mod:`~deepmir_tasks.review.pages` and :mod:`~deepmir_tasks.review.server`: the review page and
  the small local HTTP server behind ``deepmir review``.
"""

from deepmir_tasks.review.decisions import (DECISIONS, ReviewSubject, find_review_subjects, read_candidates,
                                            read_decisions, save_decision)

__all__ = ["DECISIONS", "ReviewSubject", "find_review_subjects", "read_candidates", "read_decisions",
           "save_decision"]
