"""Fleet queries (R5): affected version ranges, parsed once in hidsctl and re-checked in the
controllers, which answer them from their inventory index.

Only hidsctl and the controller import this package (it needs `univers`); the agent never does.
"""
