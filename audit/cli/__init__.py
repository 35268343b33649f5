"""Subcommands of `python manage.py audit`: every module here with `register` and `handle` is one."""
