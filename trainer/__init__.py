"""Learner tier: training data and prompt sampling, RL algorithms (GAE, GRPO, PPO losses, KL), policy weights."""
