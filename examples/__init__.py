"""Example systems the kit is demonstrated and tested against."""
