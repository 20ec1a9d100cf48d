"""Helpers shared by the test modules: small constructed or simulated data with known answers.

Import them as ``from helpers.model import synthetic_subject`` (pytest puts ``tests/`` on the
path because ``tests/conftest.py`` lives there). Fixtures live in ``tests/conftest.py``; the
modules here hold plain functions and constants only.

- ``lesions``: balls, oblique affines, labelled volumes and prediction/annotation pairs.
- ``model``: tiny synthetic subjects and BIDS folders for the model and training tests.
- ``preprocess``: synthetic heads, rotations and grids for the preprocessing tests.
- ``report``: phantoms and HTML parsing for the report tests.
- ``simulate``: measuring simulated images at world points (samples, rings, neighbourhoods).
"""
