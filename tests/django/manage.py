#!/usr/bin/env python3
"""The Django side of tests/django_differential.rs: Django 5.2's file session backend behind
views that mirror filesession's demo routes (see diffsite/views.py)."""
import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "diffsite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
