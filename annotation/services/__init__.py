"""Writes of the annotation domain, one module per capability (users, ranking, consensus, export).

Import from the module that owns the write, e.g. `from annotation.services.users import user_create`.
"""
