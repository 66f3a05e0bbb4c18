"""The kill campaign's Celery app: ``celery -A tests.campaigns.celery_app worker``.

Written as a user writes one with :func:`midvary.celery.register`, and what the campaign
changes: the broker from ``MIDVARY_TEST_BROKER``, a short Redis ``visibility_timeout``
(``MIDVARY_TEST_VISIBILITY``, seconds) so a killed worker's jobs are delivered again within
seconds, one prefetched message per process, and fast polls for the fake provider's
0.5-1.5 s tasks (set on ``worker_process_init``, after midvary's own receiver opened the
session).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals

import midvary
import midvary.celery

FAST = midvary.PollPolicy(
    initial_delay=0.3, factor=1.0, max_delay=0.3, jitter=0.1, timeout=30.0, target_delay=None
)

BROKER = os.environ.get("MIDVARY_TEST_BROKER", "redis://127.0.0.1:6379/1")
VISIBILITY = float(os.environ.get("MIDVARY_TEST_VISIBILITY", "3"))

app = Celery("midvary-campaign", broker=BROKER, backend=BROKER)
app.conf.update(
    broker_transport_options={"visibility_timeout": VISIBILITY},
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    task_track_started=True,
)
tasks = midvary.celery.register(app)


@signals.worker_process_init.connect
def fast_polls(**_: Any) -> None:
    """Poll every 0.3 s: the fake provider's tasks take 0.5 to 1.5 s."""
    midvary.celery.session().poll = FAST
