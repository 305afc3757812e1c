"""Operator tools: the `assistant-worker` command, the dead-letter queue, pruning, the demo."""
