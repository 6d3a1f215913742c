"""Drafting a reply: the offline drafter, the LLM drafter, its prompts, and the output guard."""
