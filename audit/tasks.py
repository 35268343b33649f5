"""Celery tasks of the audit app (defined by area in audit/jobs/)."""

from audit.jobs.chaining import *  # noqa: F403
from audit.jobs.exports import *  # noqa: F403
from audit.jobs.forwarding import *  # noqa: F403
from audit.jobs.retention import *  # noqa: F403
