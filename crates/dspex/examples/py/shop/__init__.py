"""The Python side of the `python_module` example: a service's own DSPy code."""
