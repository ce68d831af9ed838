"""Supervised fine-tuning: the warm start of the zoo models whose recipe trains (`tiny-arith`)."""
