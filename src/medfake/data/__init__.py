"""Data: real samples, synthetic cohorts, training sets."""
