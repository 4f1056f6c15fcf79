"""HADIS on Celery: hybrid adaptive diffusion serving.

The package import stays free of Celery, Redis and Flask so that the functional core
(router, configuration table, planner) can be used on its own; the Celery app lives in
``hadis_celery.celery`` (which ``celery -A hadis_celery`` finds by name).
"""

__version__ = "0.1.0"
