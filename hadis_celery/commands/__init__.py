"""CLI sub-commands, one module each; ``hadis_celery.cli`` discovers them."""
