"""IterComp's Algorithm 1 as steps that both the app's Celery stages and ``python -m training.ml.loop`` call.

``config`` (no torch: the web form builds it) holds the one round configuration; ``steps`` holds the
steps themselves — ``train_rewards``, ``finetune``, ``load_policy``, ``sample_groups``, ``insert_samples``
— each taking plain inputs (paths, pair records, the config) and returning plain outputs.
"""
