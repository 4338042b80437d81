"""supcon_jax: Supervised Contrastive Learning (Khosla et al., 2020) in JAX/Flax."""
