"""Reward tier: scoring of trajectories and the reward stream worker."""
