"""The Dagster code location of sdft: one skill = one partition, from its DVC-tracked data to a registered model."""
