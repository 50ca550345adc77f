"""Ranking mathematics shared by the web app and the ML core, with no Django in it.

Orderings and the public rank formats (``rankformats``), weighted consensus of expert rankings
(``aggregation``), inter-annotator agreement and the weights derived from it (``agreement``), image-rank
pairs and reward-guided insertion of new samples (``pairs``), and the pair schema the exporters write and
the reward-model trainer reads (``pair_schema``). It sits below every app so that each import arrow points
one way: ``gallery``, ``annotation``, ``training`` and the Django-free ``training/ml`` core all import it,
and it imports none of them (nor Django, rest_framework, celery or torch); ``scripts/check_imports.py``
enforces this.
"""
