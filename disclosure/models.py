"""Disclosure: tiers, grants, agreements, reviews, release decisions, audit."""
