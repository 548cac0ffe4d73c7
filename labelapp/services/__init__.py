"""Writes. Every HTML view, API view, management command and worker goes through these.

Functions are named `<entity>_<action>`, take keyword-only arguments, run in a transaction and
raise django.core.exceptions.ValidationError with a message meant for the person who acted.
"""
