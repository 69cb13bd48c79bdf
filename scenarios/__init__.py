"""SimPy scenarios for flashing, rollback and fleet campaigns.

Not built yet: this package reserves its place in the layout.
"""
