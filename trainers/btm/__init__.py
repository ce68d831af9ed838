"""Branch-train-merge: domain experts trained in parallel (GRPO runs as Ray tasks), merged and ensembled."""
