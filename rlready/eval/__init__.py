"""Evaluation: held-out perplexity / entropy / head mass, knowledge recall, reasoning Avg/Cons/Pass@k."""
