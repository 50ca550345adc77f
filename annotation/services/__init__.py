"""Writes of the annotation domain, one module per concept (users, claims, submission, review, gold,
task_status, tasks, imports, consensus, export, snapshots).

Import from the module that owns the write, e.g. `from annotation.services.users import user_create`.
A status field has one writer: `task_status` for RankingTask.status, `claims` for TaskClaim.status.
"""
