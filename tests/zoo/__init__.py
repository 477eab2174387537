"""Tests of the bundled zoo models and their training script."""
