#!/usr/bin/env python3
"""The Django peer of the benchmark: Django 5.2's file session backend, the classic example."""
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchsite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
