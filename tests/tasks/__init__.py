"""Tests of the built-in tasks and the data-file readers."""
