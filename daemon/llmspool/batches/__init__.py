"""The Batch API pipeline: what a batch looks like upstream, and the files the daemon builds."""
