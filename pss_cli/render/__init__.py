"""Rendering: rich tables for people, JSON and JSON Lines for scripts. Nothing here captures or changes anything."""
