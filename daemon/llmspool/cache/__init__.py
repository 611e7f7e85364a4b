"""The response cache: exact and near-duplicate answers, and single-flight sharing."""
