"""The lesion classes and their label values: the one table every layer reads.

Every DEEPMIR label map (the model's ``dseg``, the lesion table's ``dseg`` of kept lesions, the
annotations a model is trained and evaluated on) uses these values; the model record's
``classes`` list names the network's output channels with the same names.
"""

from __future__ import annotations

__all__ = ["DSEG_LABELS", "CLASSES", "LESION_CLASSES", "CLASS_DESCRIPTIONS"]

#: class name -> label value in every DEEPMIR dseg (0 is background)
DSEG_LABELS = {"background": 0, "cmb": 1, "iron": 2}

#: label value -> lesion class name, for the foreground classes (in table order: CMBs first)
CLASSES = {v: k for k, v in DSEG_LABELS.items() if v}

#: the lesion classes, in table order
LESION_CLASSES = tuple(CLASSES.values())

#: class name -> what it is, for sidecars and lookup tables
CLASS_DESCRIPTIONS = {"background": "no lesion", "cmb": "cerebral microbleed",
                      "iron": "non-haemorrhagic iron deposit"}
