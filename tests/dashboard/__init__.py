"""Tests of the Textual dashboard (``pi-dash``): snapshots, pilot-driven actions, hostile directories."""
