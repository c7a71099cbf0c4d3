"""Category tables (facts, typed as data): names, colours, thing/stuff flags and dataset ids per dataset.

Every table is a list of dicts ``{"id": int, "name": str, "color": (r, g, b), "isthing": 0 | 1}`` in
contiguous order: the i-th entry has contiguous id i.
"""
