"""Screens layered over the dashboard: details of one instance, help, confirmations."""
