"""Where a run computes: device mesh and sharding, several processes, CPU process settings."""
