"""Routing: category, issue and priority models, keyword priors, the specialist per category."""
