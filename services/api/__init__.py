"""The control plane: jobs REST API, job store, scheduler and launchers."""
