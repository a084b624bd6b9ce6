"""Adapters: the ORM mapping, repositories and other ports' database implementations."""
