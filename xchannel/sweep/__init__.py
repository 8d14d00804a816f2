"""Running many xchannel jobs: cluster profiles, submitit executors and sweeps."""
