"""The production loop's monitoring: batch scoring (score), drift and the label-free estimate (drift, stats)."""
