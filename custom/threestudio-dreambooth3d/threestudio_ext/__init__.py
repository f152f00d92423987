"""threestudio adapters: thin registered wrappers around the threestudio-free core."""
