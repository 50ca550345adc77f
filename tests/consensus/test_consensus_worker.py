"""A submitted ranking's consensus is recomputed asynchronously by the real Celery worker process."""

from __future__ import annotations

import pytest
from django.db import transaction

from annotation.models import ConsensusRanking, PreferencePair
from annotation.services.consensus import consensus_schedule
from tests.consensus import factories as f


@pytest.mark.celery
@pytest.mark.django_db(transaction=True)
def test_scheduled_recompute_runs_in_the_worker_after_commit(celery_worker_process, make_user, wait_for):
    t, ids = f.task(f.prompt("a dog on the left of a cat"), required=1)
    with transaction.atomic():
        f.rank(t, make_user("annotator"), list(reversed(ids)))
        consensus_schedule(task_id=t.pk)
        # Enqueued only on commit: nothing can have been computed inside the transaction.
        assert not ConsensusRanking.objects.filter(task=t).exists()
    consensus = wait_for(
        lambda: ConsensusRanking.objects.filter(task=t).first(), timeout=30, message="the worker's consensus"
    )
    assert [g[0] for g in consensus.ordering] == list(reversed(ids))
    wait_for(lambda: PreferencePair.objects.filter(consensus=consensus).count() == 15, timeout=10)
    assert PreferencePair.objects.filter(winner_id=ids[5], loser_id=ids[0]).exists()
